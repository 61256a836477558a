"""`fleet-api`: the central service."""

from __future__ import annotations

import argparse
import logging
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleet-api", description="edgefleet fleet API: devices, models, rollouts.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API and the broker connection",
                           description="Settings come from EDGEFLEET_API_* environment variables; flags override them.")
    serve.add_argument("--host", help="bind address (EDGEFLEET_API_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (EDGEFLEET_API_PORT, default 8000)")
    serve.add_argument("--database-url", help="SQLAlchemy URL (EDGEFLEET_DATABASE_URL, default sqlite:///fleet.db)")
    serve.add_argument("--broker", dest="broker_url", help="mqtt://HOST:PORT (EDGEFLEET_API_BROKER_URL)")
    serve.add_argument("--artifact-dir", help="where bundles are stored (EDGEFLEET_API_ARTIFACT_DIR)")
    serve.add_argument("--trusted-key", dest="trusted_keys", help="PEM public key(s), comma-separated (EDGEFLEET_API_TRUSTED_KEYS)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)

    import uvicorn

    from fleet_protocol.signing import public_keys

    from .app import create_app
    from .gc_policy import tune_for_serving
    from .settings import ApiSettings

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "log_level") and v is not None}
    try:
        settings = ApiSettings(**overrides)
        public_keys(settings.trusted_keys)  # a missing or bad key file: one error line now, not at the first bundle
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # SIGTERM (kubelet, systemd, `kill`) as Ctrl-C: uvicorn runs the app's shutdown (ticker, broker, last telemetry
    # flush), then re-raises the signal it caught; as KeyboardInterrupt that ends here with exit 0, not 143.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    app = create_app(settings)
    tune_for_serving()  # after everything is imported and built: see gc_policy
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, access_log=False)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
