"""`edge-agent camera`: run one camera pipeline stand-alone, with its local view, events to MQTT if asked."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading

log = logging.getLogger(__name__)

EXIT_USAGE = 2


def add_parser(sub) -> None:
    p = sub.add_parser("camera", help="run a camera pipeline (detector on a live source) with a local view",
                       description="Reads SRC on its own thread, runs the detector on the newest frame, serves "
                                   "/ and /stream (annotated MJPEG) and /metrics, and sends detections as events.")
    p.add_argument("--source", required=True, metavar="SRC", help="camera index, video file, rtsp:// or http(s):// MJPEG URL")
    p.add_argument("--model", required=True, metavar="BUNDLE", help="a signed bundle file (model-tools bundle)")
    p.add_argument("--trusted-key", dest="trusted_keys", default=None, help="PEM public key(s) the bundle must be signed with, comma-separated (EDGEFLEET_AGENT_TRUSTED_KEYS)")
    p.add_argument("--name", default="cam0", help="camera name in events and metrics")
    p.add_argument("--loop", action="store_true", help="loop a video file")
    p.add_argument("--fast", action="store_true", help="read a video file as fast as possible instead of at its frame rate")
    p.add_argument("--max-fps", type=float, default=None, help="frame-rate cap")
    p.add_argument("--resize", choices=["stretch", "letterbox"], default=None)
    p.add_argument("--min-score", type=float, default=0.5, help="minimum score of a detection to be reported")
    p.add_argument("--event-interval", type=float, default=1.0, help="at most one detections event per this many seconds")
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

    from .config import CameraConfig, EventsConfig, parse_source
    from .detector import Detector
    from .detectors import UnsupportedModel
    from .model import ModelError, load
    from .sources import SourceError

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE

    try:
        source = parse_source(args.source, loop=args.loop, realtime=not args.fast, max_fps=args.max_fps)
        config = CameraConfig(name=args.name, source=source, resize=args.resize,
                              events=EventsConfig(min_score=args.min_score, min_interval_s=args.event_interval))
    except (ValidationError, ValueError) as exc:
        return fail(f"bad camera settings for source {args.source!r}: {exc}")
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # our message names the source; OpenCV's add noise
    try:
        probe(config.source)
    except SourceError as exc:
        return fail(f"cannot open source {args.source!r}: {exc}")
    try:
        keys = _trusted_keys(args.trusted_keys)
        spec, session = load(args.model, keys, threads=args.threads)
        Detector(spec, session, resize=config.resize)  # refuse a model the camera cannot decode, before serving
    except (ModelError, UnsupportedModel, OSError, ValueError) as exc:
        return fail(f"model {args.model!r}: {exc}")

    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from .metrics import register
    from .service import CameraService
    from .view import create_router

    from ..settings import AgentSettings
    from ..sync import AgentLink

    sinks = []
    link = None
    if args.broker:
        overrides = {"broker_url": args.broker, **({"device_id": args.device_id} if args.device_id else {})}
        link = AgentLink(AgentSettings(**overrides), reconciler=None)  # the device's connection, events only
        link.start()
        sinks.append(link.send_event)
    if args.print_events:
        sinks.append(lambda e: print(json.dumps(e.model_dump(mode="json")), flush=True))

    def on_event(event) -> None:
        for sink in sinks:
            sink(event)

    service = CameraService(on_event=on_event)
    register(service)
    service.set_model(spec, session)
    service.apply([config])
    app = FastAPI(title="edgefleet camera", docs_url=None, redoc_url=None)
    app.include_router(create_router(service))

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    server = uvicorn.Server(uvicorn.Config(app, host=args.http_host, port=args.http_port, log_level="warning",
                                           access_log=False, lifespan="off", timeout_graceful_shutdown=1))
    if args.seconds:
        threading.Timer(args.seconds, lambda: setattr(server, "should_exit", True)).start()
    print(f"camera {config.name}: {config.source.describe()} → {spec.describe()}", flush=True)
    print(f"open http://{args.http_host}:{args.http_port}/ to watch (stream: /stream, metrics: /metrics)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        stats = service.stats()
        service.stop()
        if link:
            link.stop()
    if not server.started:
        return fail(f"cannot serve on {args.http_host}:{args.http_port} (port in use?)")
    for s in stats:
        print(f"camera {s['name']}: {s['frames_processed']} frames, {s['frames_dropped']} dropped, "
              f"{s['reconnects']} reconnects, {s['events_sent']} events", flush=True)
    return 0


def _trusted_keys(value: str | None) -> list:
    """--trusted-key, else EDGEFLEET_AGENT_TRUSTED_KEYS: the agent's own settings, read the agent's way."""
    from ..settings import AgentSettings

    return AgentSettings(**({"trusted_keys": value} if value is not None else {})).public_keys()
