"""Real sources for camera tests: the generated face video, and an MJPEG HTTP server that can go away."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

from demo.cluster import free_port


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def video_jpegs(path: Path) -> list[bytes]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
    cap.release()
    return out


class MjpegServer:
    """multipart/x-mixed-replace JPEG over HTTP, like an IP camera. `stop()` closes the port and every open
    stream (the camera vanishes); `start()` brings it back on the same port. Every `corrupt_every`-th part is
    garbage instead of a JPEG."""

    def __init__(self, jpegs: list[bytes], fps: float = 30.0, corrupt_every: int = 0, port: int | None = None) -> None:
        self.jpegs = jpegs
        self.fps = fps
        self.corrupt_every = corrupt_every
        self.port = port or free_port()
        self.sent = 0
        self._server: ThreadingHTTPServer | None = None
        self._up = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/video"

    def start(self) -> MjpegServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=camframe")
                self.end_headers()
                i = 0
                try:
                    while outer._up.is_set():
                        data = outer.jpegs[i % len(outer.jpegs)]
                        i += 1
                        if outer.corrupt_every and i % outer.corrupt_every == 0:
                            data = b"\xff\xd8 this is not a jpeg " + bytes(range(256)) * 4
                        self.wfile.write(b"--camframe\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data))
                        self.wfile.write(data + b"\r\n")
                        outer.sent += 1
                        time.sleep(1 / outer.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._up.set()
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._up.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def text_frame() -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A 640×480 sign with three lines of text, and each line's box."""
    img = np.full((480, 640, 3), 235, np.uint8)
    truth = []
    for text, (x, y), scale in [("EDGEFLEET", (40, 100), 1.6), ("camera 42", (60, 250), 1.2), ("HELLO", (300, 400), 1.4)]:
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 3)
        cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (20, 20, 20), 3, cv2.LINE_AA)
        truth.append((x, y - th, x + tw, y + base))
    return img, truth
