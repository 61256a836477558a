// Relative times ("3 minutes ago") kept current, with the absolute time on hover; runs after every htmx swap.
(function () {
  "use strict";
  var units = [[31536000, "year"], [2592000, "month"], [86400, "day"], [3600, "hour"], [60, "minute"]];

  function relative(date) {
    var s = (Date.now() - date.getTime()) / 1000, future = s < 0;
    s = Math.abs(s);
    if (s < 45) return future ? "in a few seconds" : "just now";
    for (var i = 0; i < units.length; i++) {
      if (s >= units[i][0] * 0.95) {
        var n = Math.max(1, Math.round(s / units[i][0]));
        var text = n + " " + units[i][1] + (n === 1 ? "" : "s");
        return future ? "in " + text : text + " ago";
      }
    }
    return "just now";
  }

  function refresh(root) {
    (root || document).querySelectorAll("time[datetime]").forEach(function (el) {
      var date = new Date(el.getAttribute("datetime"));
      if (isNaN(date)) return;
      el.textContent = relative(date);
      if (!el.dataset.utc) el.dataset.utc = el.title;
      el.title = date.toLocaleString() + " (" + el.dataset.utc + ")";
    });
  }

  document.addEventListener("DOMContentLoaded", function () { refresh(document); });
  document.addEventListener("htmx:load", function (e) { refresh(e.target); });
  setInterval(function () { refresh(document); }, 15000);
  window.edgefleet = { relative: relative, refreshTimes: refresh };
})();
