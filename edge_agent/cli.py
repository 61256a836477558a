"""`edge-agent`: the daemon on each device."""

from __future__ import annotations

import argparse
import logging
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-agent", description="edgefleet edge agent: serves models, follows the fleet's desired state.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="run the agent daemon",
                         description="Settings come from EDGEFLEET_AGENT_* environment variables; flags override them.")
    run.add_argument("--device-id", help="this device's id (EDGEFLEET_AGENT_DEVICE_ID, default: hostname)")
    run.add_argument("--broker", dest="broker_url", help="mqtt://HOST:PORT or mqtts://… (EDGEFLEET_AGENT_BROKER_URL)")
    run.add_argument("--data-dir", help="model store folder (EDGEFLEET_AGENT_DATA_DIR, default /var/lib/edgefleet)")
    run.add_argument("--trusted-key", dest="trusted_keys", help="PEM public key(s) bundles must be signed with, comma-separated")
    run.add_argument("--http-host", help="local API bind address (default 127.0.0.1)")
    run.add_argument("--http-port", type=int, help="local API port (default 8080)")
    run.add_argument("--username", dest="mqtt_username", help="broker user name (EDGEFLEET_AGENT_MQTT_USERNAME)")
    run.add_argument("--password", dest="mqtt_password", help="broker password (EDGEFLEET_AGENT_MQTT_PASSWORD)")
    run.add_argument("--memory-budget-mb", type=int,
                     help="MiB the models may take; a model that would not fit is refused with a reason (0: no check)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    from .camera import cli as camera_cli

    camera_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "camera":
        return camera_cli.run(args)

    from pydantic import ValidationError

    from fleet_protocol.signing import public_keys

    from .agent import Agent, ServeError
    from .settings import AgentSettings

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "log_level") and v is not None}
    try:
        settings = AgentSettings(**overrides)
        if not public_keys(settings.trusted_keys):
            raise ValueError("no trusted key: pass --trusted-key or set EDGEFLEET_AGENT_TRUSTED_KEYS")
        agent = Agent(settings)
    except ValidationError as exc:  # one line per bad setting, no pydantic boilerplate
        for err in exc.errors():
            print(f"error: {'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # SIGTERM (systemd, kubelet, `kill`) stops the agent as Ctrl-C does: uvicorn shuts down, then re-raises the
    # signal it caught; with Python's default it killed the process (exit 143) before the agent's own cleanup
    # (cameras, telemetry, broker link, sessions) ran. As KeyboardInterrupt it unwinds through that cleanup.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        agent.run()
    except KeyboardInterrupt:
        pass
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
