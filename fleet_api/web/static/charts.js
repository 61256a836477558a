// The device page's telemetry charts: per-minute rollups from the JSON API (same sign-in cookie), drawn with uPlot.
(function () {
  "use strict";
  var root = document.getElementById("charts");
  if (!root || !window.uPlot) return;
  var device = root.dataset.device, minutes = 60, model = "", picker = document.getElementById("tele-model"), charts = {}, note = document.getElementById("tele-note");
  var palette = { blue: "#4f7cff", violet: "#9b5de5", red: "#e5484d", green: "#30a46c", amber: "#f5a524" };
  var specs = {
    requests: { series: [["requests", palette.blue]], unit: "" },
    latency: { series: [["p50 ms", palette.green], ["p95 ms", palette.violet]], unit: " ms" },
    errors: { series: [["errors", palette.red]], unit: "" },
    cpu: { series: [["cpu %", palette.amber]], unit: " %" },
    memory: { series: [["memory MB", palette.blue]], unit: " MB" }
  };

  function bucket(rows, since) {
    // Several rows per minute when the device changed model within it: add counts, average latencies and CPU.
    var byMinute = {};
    rows.forEach(function (r) {
      // Rows per model (requests, latency) and one per device (model null: CPU, memory); a chosen model keeps
      // only its own rows and the device's.
      if (model && r.model && r.model !== model) return;
      var t = Math.floor(new Date(r.minute).getTime() / 1000);
      var b = byMinute[t] || (byMinute[t] = { requests: 0, errors: 0, p50: [], p95: [], cpu: [], memory: null });
      b.requests += r.requests || 0;
      b.errors += r.errors || 0;
      if (r.latency_ms_p50 != null) b.p50.push(r.latency_ms_p50);
      if (r.latency_ms_p95 != null) b.p95.push(r.latency_ms_p95);
      if (r.cpu_percent != null) b.cpu.push(r.cpu_percent);
      if (r.memory_mb_max != null) b.memory = Math.max(b.memory || 0, r.memory_mb_max);
    });
    var mean = function (a) { return a.length ? a.reduce(function (x, y) { return x + y; }, 0) / a.length : null; };
    var x = [], cols = { requests: [], errors: [], p50: [], p95: [], cpu: [], memory: [] };
    // A device with a short history gets a window that starts shortly before its first minute (at least 15 min).
    var first = Math.min.apply(null, Object.keys(byMinute).map(Number).concat([Infinity]));
    var start = Math.max(Math.floor(since / 60000) * 60, Math.min(first - 120, Math.floor(Date.now() / 60000) * 60 - 900));
    var end = Math.floor(Date.now() / 60000) * 60;
    for (var t = start; t <= end; t += 60) {  // every minute on the axis: silence shows as a gap, not as a line
      var b = byMinute[t];
      x.push(t);
      cols.requests.push(b ? b.requests : null);
      cols.errors.push(b ? b.errors : null);
      cols.p50.push(b ? mean(b.p50) : null);
      cols.p95.push(b ? mean(b.p95) : null);
      cols.cpu.push(b ? mean(b.cpu) : null);
      cols.memory.push(b ? b.memory : null);
    }
    return {
      requests: [x, cols.requests], latency: [x, cols.p50, cols.p95], errors: [x, cols.errors],
      cpu: [x, cols.cpu], memory: [x, cols.memory], count: rows.length
    };
  }

  function options(name, width) {
    var spec = specs[name];
    return {
      width: width, height: 170,
      cursor: { points: { size: 6 } },
      legend: { show: true, live: true },
      scales: { x: { time: true }, y: { range: function (u, lo, hi) { return [0, hi > 0 ? hi * 1.15 : 1]; } } },
      axes: [
        { stroke: "#7a8599", grid: { stroke: "#eef1f6", width: 1 }, ticks: { stroke: "#eef1f6" }, font: "11px system-ui" },
        { stroke: "#7a8599", grid: { stroke: "#eef1f6", width: 1 }, ticks: { show: false }, font: "11px system-ui", size: 46,
          values: function (u, vals) { return vals.map(function (v) { return v >= 1000 ? (v / 1000).toFixed(1) + "k" : +v.toFixed(2); }); } }
      ],
      series: [{}].concat(spec.series.map(function (s) {
        // uPlot draws points by itself only where they are sparse: a lone minute still shows
        return { label: s[0], stroke: s[1], width: 2, fill: spec.series.length === 1 ? s[1] + "1f" : undefined, points: { size: 5, fill: s[1] }, spanGaps: false,
                 value: function (u, v) { return v == null ? "—" : (+v.toFixed(2)) + spec.unit; } };
      }))
    };
  }

  function draw(data) {
    root.querySelectorAll(".chart").forEach(function (el) {
      var name = el.dataset.metric, width = Math.max(240, el.clientWidth);
      if (charts[name]) { charts[name].setData(data[name]); return; }
      el.innerHTML = "";
      charts[name] = new uPlot(options(name, width), data[name], el);
    });
    if (note) note.textContent = data.count ? "" : "No telemetry in this range yet.";
    root.dataset.loaded = String(data.count);
  }

  function load() {
    var since = Date.now() - minutes * 60000;
    var url = "/v1/devices/" + encodeURIComponent(device) + "/telemetry?limit=" + Math.min(10000, minutes * 4 * (+root.dataset.models + 1)) +
              "&since=" + encodeURIComponent(new Date(since).toISOString());
    fetch(url, { credentials: "same-origin" }).then(function (r) {
      if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); return null; }
      return r.ok ? r.json() : null;
    }).then(function (body) { if (body) draw(bucket(body.minutes, since)); }).catch(function () {});
  }

  document.getElementById("range").addEventListener("click", function (e) {
    var b = e.target.closest("button");
    if (!b) return;
    this.querySelectorAll("button").forEach(function (x) { x.classList.toggle("on", x === b); });
    minutes = +b.dataset.minutes;
    Object.keys(charts).forEach(function (k) { charts[k].destroy(); delete charts[k]; });
    load();
  });
  if (picker) picker.addEventListener("change", function () {
    model = picker.value;
    Object.keys(charts).forEach(function (k) { charts[k].destroy(); delete charts[k]; });
    load();
  });
  window.addEventListener("resize", function () {
    root.querySelectorAll(".chart").forEach(function (el) {
      var c = charts[el.dataset.metric];
      if (c) c.setSize({ width: Math.max(240, el.clientWidth), height: 170 });
    });
  });
  load();
  setInterval(load, 15000);
})();
