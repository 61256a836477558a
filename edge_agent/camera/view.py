"""The local view: a thin FastAPI router over a CameraManager.

`/` a page with the annotated stream and live numbers, `/stream` MJPEG of annotated frames (`?camera=NAME`,
the first camera by default), `/camera/stats` the numbers as JSON. Frames are drawn and encoded here, at
most `view_fps` a second and once per frame however many browsers watch, so viewers never slow the detector.
"""

from __future__ import annotations

import html
import threading
import time

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from .annotate import draw, jpeg
from .manager import CameraManager
from .pipeline import Pipeline, Result

BOUNDARY = "frame"


class _Encoded:
    """The newest annotated JPEG of one pipeline, shared by every viewer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seq = -1
        self.data = b""

    def get(self, pipeline: Pipeline, result: Result) -> bytes:
        with self.lock:
            if result.frame.seq != self.seq:
                s = pipeline.stats()
                caption = f"{pipeline.name}  {s['inference_fps']:.1f} fps  {s['latency_ms_p50'] or 0:.0f} ms"
                self.data, self.seq = jpeg(draw(result, caption)), result.frame.seq
            return self.data


def create_router(service: CameraManager, view_fps: float = 25.0) -> APIRouter:
    router = APIRouter()
    encoded: dict[int, _Encoded] = {}

    def pick(camera: str | None) -> Pipeline | None:
        pipelines = service.pipelines
        if camera is None:
            return next(iter(pipelines.values()), None)
        return pipelines.get(camera)

    def frames(pipeline: Pipeline):
        cache = encoded.setdefault(id(pipeline), _Encoded())
        seq, period = -1, 1.0 / view_fps
        while pipeline.running:
            started = time.monotonic()
            result = pipeline.wait_result(seq, timeout=1.0)
            if result is None:
                continue
            seq = result.frame.seq
            data = cache.get(pipeline, result)
            yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data + b"\r\n"
            rest = period - (time.monotonic() - started)
            if rest > 0:
                time.sleep(rest)

    @router.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        names = list(service.pipelines)
        options = "".join(f'<option value="{html.escape(n)}">{html.escape(n)}</option>' for n in names)
        return HTMLResponse(PAGE.replace("{{options}}", options))

    @router.get("/stream")
    def stream(camera: str | None = Query(default=None)) -> Response:
        pipeline = pick(camera)
        if pipeline is None:
            return JSONResponse({"error": f"no camera {camera!r}" if camera else "no camera is running"}, status_code=404)
        return StreamingResponse(frames(pipeline), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                 headers={"Cache-Control": "no-store"})

    @router.get("/camera/stats")
    def stats() -> list[dict]:
        return service.stats()

    return router


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgefleet camera</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font-family:system-ui,sans-serif;margin:0;background:#111;color:#eee}
 header{padding:.6rem 1rem;background:#222;display:flex;gap:1rem;align-items:center}
 main{display:flex;flex-wrap:wrap;gap:1rem;padding:1rem}
 img{max-width:100%;background:#000;border:1px solid #333}
 table{border-collapse:collapse;min-width:16rem} td{padding:.2rem .6rem;border-bottom:1px solid #333}
 td:last-child{text-align:right;font-variant-numeric:tabular-nums} .bad{color:#f66}
</style></head><body>
<header><strong>edgefleet camera</strong><select id="camera">{{options}}</select><span id="state"></span></header>
<main><img id="stream" alt="annotated camera stream">
<table id="numbers"><tbody></tbody></table></main>
<script>
const sel = document.getElementById('camera'), img = document.getElementById('stream');
function show() { img.src = '/stream?camera=' + encodeURIComponent(sel.value) + '&t=' + Date.now(); }
sel.onchange = show; show();
const rows = [['capture FPS','capture_fps'],['inference FPS','inference_fps'],['latency p50 (ms)','latency_ms_p50'],
  ['latency p95 (ms)','latency_ms_p95'],['detections now','detections'],['frames processed','frames_processed'],
  ['frames dropped','frames_dropped'],['corrupt frames','frames_corrupt'],['reconnects','reconnects'],
  ['events sent','events_sent'],['text read','texts'],['model','model'],['source','source']];
// Values are text, never markup: what OCR reads off a video (or a camera's name) must not run in this page.
const esc = v => String(Array.isArray(v) ? v.join(' | ') : v).replace(/[&<>"']/g, c => '&#' + c.charCodeAt(0) + ';');
async function poll() {
  try {
    const all = await (await fetch('/camera/stats')).json();
    const s = all.find(c => c.name === sel.value) || all[0];
    if (s) {
      document.querySelector('#numbers tbody').innerHTML = rows.map(([t,k]) =>
        `<tr><td>${t}</td><td id="v-${k}">${s[k] == null ? '–' : esc(s[k])}</td></tr>`).join('');
      const st = document.getElementById('state');
      st.textContent = s.state + (s.error ? ': ' + s.error : '') + (s.problem ? ' — ' + s.problem : '');
      st.className = s.state === 'live' && !s.problem ? '' : 'bad';
    }
  } catch (e) { document.getElementById('state').textContent = 'agent unreachable'; }
  setTimeout(poll, 500);
}
poll();
</script></body></html>
"""
