"""`make demo`: a broker, the fleet API and three agents on this machine; roll out a real model, v1 then v2.

    python -m demo            stays up until Ctrl-C, then stops every process it started
    python -m demo --once     exits 0 after the table
    python -m demo --tls      the same over mqtts://, with a CA made for the run (make demo ARGS=--tls)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .fleet import Fleet, build_digits_bundles, device_table, infer_digit, roll_out, upload, wait_serving

DEVICES = {
    "cam-01": {"site": "lab", "hw": "cpu"},
    "cam-02": {"site": "lab", "hw": "cpu"},
    "cam-03": {"site": "lab", "hw": "cpu"},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true", help="exit after the table instead of staying up")
    parser.add_argument("--work-dir", type=Path, default=Path(".demo"), help="folder for every process's state (wiped first)")
    parser.add_argument("--json", action="store_true", help="print the final table as JSON")
    parser.add_argument("--tls", action="store_true",
                        help="broker on mqtts:// only, with a CA made for this run that the API and agents trust")
    args = parser.parse_args(argv)
    console = Console(stderr=args.json)
    work: Path = args.work_dir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    with console.status("training the digits CNN and signing bundles 1.0.0, 2.0.0 and a mixed-up 3.0.0 …"):
        trusted_key, bundles = build_digits_bundles(work)
    console.print(f"[green]✓[/green] bundles: {', '.join(b.name for b in bundles)}")

    with console.status("starting mosquitto, the fleet API and three agents …"):
        fleet = Fleet(work, trusted_key, DEVICES, tls=args.tls).__enter__()
    try:
        console.print(f"[green]✓[/green] broker {fleet.broker.url}, fleet API {fleet.api.url}")
        with fleet.api.client() as api:
            for bundle in bundles:
                upload(api, bundle)
            # 3.0.0 ships other weights than its golden outputs: the canary refuses it, the rollout aborts
            # by itself after wave 1 and the canary is sent back to 2.0.0. Nobody steps in.
            for version, waves, expected in (("1.0.0", "100%", "succeeded"), ("2.0.0", "1,100%", "succeeded"),
                                             ("3.0.0", "1,2,100%", "aborted")):
                started = time.monotonic()
                with console.status(f"rolling out digits {version} (waves {waves}) …"):
                    rollout = roll_out(api, "digits", version, "site=lab", waves)
                mark = "[green]✓[/green]" if rollout["state"] == expected else "[red]✗[/red]"
                console.print(f"{mark} rollout {rollout['id']} of digits {version}: {rollout['state']} "
                              f"in {time.monotonic() - started:.1f}s" + (f" — {rollout['reason']}" if rollout.get("reason") else ""))
                if rollout["state"] != expected:
                    return 1
            wait_serving(api, "2.0.0")
            from model_tools.zoo.digits import load_split

            _, _, x_test, y_test = load_split()
            rows = device_table(api)
            for i, row in enumerate(rows):
                agent = fleet.agents[row["device"]]
                digit, p = infer_digit(agent.url, "digits", x_test[i])
                row.update(prediction=digit, probability=round(p, 3), label=int(y_test[i]))
        if args.json:
            print(json.dumps(rows))
        else:
            table = Table(title="edgefleet demo: every device after v2 rolled out and the bad v3 was stopped")
            for col in ("device", "state", "version", "provider", "prediction", "label"):
                table.add_column(col)
            for r in rows:
                table.add_row(r["device"], r["state"], r["version"], r["provider"], f"{r['prediction']} (p={r['probability']})", str(r["label"]))
            console.print(table)
        if args.once:
            return 0
        console.print(f"\nFleet API: {fleet.api.url}/docs   devices: " + "  ".join(a.url for a in fleet.agents.values()))
        console.print("Running. Press Ctrl-C to stop every process.")
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    finally:
        with console.status("stopping …"):
            fleet.close()


if __name__ == "__main__":
    sys.exit(main())
