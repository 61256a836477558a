"""`edge-agent camera`: run one camera pipeline stand-alone, with its local view, events to MQTT if asked."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet_protocol.messages import Event

log = logging.getLogger(__name__)

EXIT_USAGE = 2


def add_parser(sub) -> None:
    p = sub.add_parser("camera", help="run a camera pipeline (detector on a live source) with a local view",
                       description="Reads SRC on its own thread, runs the detector on the newest frame, serves "
                                   "/ and /stream (annotated MJPEG) and /metrics, and sends detections as events.")
    p.add_argument("--source", required=True, metavar="SRC", help="camera index, video file, rtsp:// or http(s):// MJPEG URL")
    p.add_argument("--model", required=True, metavar="BUNDLE", help="the detector: a signed bundle file (model-tools bundle)")
    p.add_argument("--stage", dest="stages", action="append", default=[], metavar="BUNDLE",
                   help="a later stage run on every box's crop (e.g. OCR recognition), in order; repeatable")
    p.add_argument("--trusted-key", dest="trusted_keys", default=None, help="PEM public key(s) the bundle must be signed with, comma-separated (EDGEFLEET_AGENT_TRUSTED_KEYS)")
    p.add_argument("--name", default="cam0", help="camera name in events and metrics")
    p.add_argument("--loop", action="store_true", help="loop a video file")
    p.add_argument("--fast", action="store_true", help="read a video file as fast as possible instead of at its frame rate")
    p.add_argument("--max-fps", type=float, default=None, help="frame-rate cap")
    p.add_argument("--resize", choices=["stretch", "letterbox"], default=None)
    p.add_argument("--min-score", type=float, default=0.5, help="minimum score of a detection to be reported")
    p.add_argument("--event-interval", type=float, default=1.0, help="at most one detections event per this many seconds (≥ 0.01)")
    p.add_argument("--broker", default=None, help="mqtt://HOST:PORT: send events to devices/{id}/events")
    p.add_argument("--device-id", default=None, help="device id in the events topic (default: hostname)")
    p.add_argument("--http-host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8090)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--print-events", action="store_true", help="print each event as a JSON line")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def probe(config) -> None:
    """Open the source once and read a frame, so a wrong SRC fails now with its name, not later in a thread."""
    from .sources import CorruptFrame, EndOfStream, SourceError, create

    source = create(config)
    try:
        source.open()
        try:
            source.read()
        except CorruptFrame:
            pass
        except EndOfStream:
            raise SourceError(f"{source.name} has no frames") from None
    finally:
        source.close()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pydantic import ValidationError

    from fleet_protocol.cameras import Camera, CameraEvents, source_from_text

    from .model import ModelError, StaticHost, load
    from .sources import SourceError
    from .stages import check

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE

    source = source_from_text(args.source)
    options = {"loop": args.loop or None, "realtime": False if args.fast else None, "max_fps": args.max_fps}
    source.update({k: v for k, v in options.items() if v is not None and (k == "max_fps" or source["type"] == "file")})
    try:
        events = CameraEvents(min_score=args.min_score, max_per_s=1.0 / max(args.event_interval, 0.01))
        probe_config = Camera.model_validate({"name": args.name, "source": source, "detector": "probe"}).source
    except (ValidationError, ValueError) as exc:
        return fail(f"bad camera settings for source {args.source!r}: {_first_error(exc)}")
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # our message names the source; OpenCV's add noise
    try:
        probe(probe_config)
    except SourceError as exc:
        return fail(f"cannot open source {probe_config.describe()!r}: {exc}")
    keys = _trusted_keys(args.trusted_keys)
    models = []
    for ref in [args.model, *args.stages]:
        try:
            models.append(load(ref, keys, threads=args.threads))
        except (ModelError, OSError, ValueError) as exc:
            return fail(f"model {ref!r}: {exc}")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        return fail(f"two bundles of one model name: {names}")
    try:
        camera = Camera.model_validate({"name": args.name, "source": source, "detector": names[0], "stages": names[1:],
                                        "resize": args.resize, "events": events})
    except (ValidationError, ValueError) as exc:
        return fail(f"bad camera settings: {_first_error(exc)}")
    problem = check(camera, {m.name: m.manifest for m in models})  # refuse what the camera cannot decode, before serving
    if problem is not None:
        return fail(f"model {args.model!r}: {problem}")

    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from .manager import CameraManager
    from .metrics import register
    from .view import create_router

    sinks: list[Callable[[Event], None]] = []
    link = None
    if args.broker:
        from ..mqtt.link import AgentLink
        from ..settings import AgentSettings

        overrides = {"broker_url": args.broker, **({"device_id": args.device_id} if args.device_id else {})}
        link = AgentLink(AgentSettings(**overrides), reconciler=None)  # the device's connection, events only
        link.start()
        sinks.append(link.send_event)
    if args.print_events:
        sinks.append(lambda e: print(json.dumps(e.model_dump(mode="json")), flush=True))

    def on_event(event) -> None:
        for sink in sinks:
            sink(event)

    manager = CameraManager(StaticHost(models), on_event=on_event)
    register(manager)
    manager.apply([camera])
    app = FastAPI(title="edgefleet camera", docs_url=None, redoc_url=None)
    app.include_router(create_router(manager))

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    server = uvicorn.Server(uvicorn.Config(app, host=args.http_host, port=args.http_port, log_level="warning",
                                           access_log=False, lifespan="off", timeout_graceful_shutdown=1))
    if args.seconds:
        threading.Timer(args.seconds, lambda: setattr(server, "should_exit", True)).start()
    print(f"camera {camera.name}: {camera.source.describe()} → {' → '.join(f'{m.name} {m.version} ({m.manifest.task})' for m in models)}", flush=True)
    print(f"open http://{args.http_host}:{args.http_port}/ to watch (stream: /stream, metrics: /metrics)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        stats = manager.stats()
        manager.stop()
        if link:
            link.stop()
    if not server.started:
        return fail(f"cannot serve on {args.http_host}:{args.http_port} (port in use?)")
    for s in stats:
        print(f"camera {s['name']}: {s['frames_processed']} frames, {s['frames_dropped']} dropped, "
              f"{s['reconnects']} reconnects, {s['events_sent']} events", flush=True)
    return 0


def _first_error(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
    return str(exc)


def _trusted_keys(value: str | None) -> list:
    """--trusted-key, else EDGEFLEET_AGENT_TRUSTED_KEYS: the agent's own settings, read the agent's way."""
    from fleet_protocol.signing import public_keys

    from ..settings import AgentSettings

    return public_keys(value if value is not None else AgentSettings().trusted_keys)
