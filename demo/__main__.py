"""`make demo`: a broker, the fleet API and three agents on this machine; roll out a real model, v1 then v2,
then a second model (BlazeFace) and a camera pipeline that uses it, all set through the fleet API.

    python -m demo            stays up until Ctrl-C (or SIGTERM), then stops every process it started
    python -m demo --once     exits 0 after the table
    python -m demo --tls      the same over mqtts://, with a CA made for the run (make demo ARGS=--tls)
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .camera import make_video
from .fleet import (
    CAMERA,
    Fleet,
    build_blazeface_bundle,
    build_digits_bundles,
    camera_stats,
    device_table,
    infer_digit,
    roll_out,
    set_up_cameras,
    upload,
    wait_serving,
)

DEVICES = {
    "cam-01": {"site": "lab", "hw": "cpu"},
    "cam-02": {"site": "lab", "hw": "cpu"},
    "cam-03": {"site": "lab", "hw": "cpu"},
}


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (`kill`, a supervisor, a CI runner) takes the Ctrl-C path: every `finally` below runs and stops
    # the broker, the API and the agents, which live in sessions of their own and would otherwise outlive us.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return _run(argv)
    except KeyboardInterrupt:
        return 0


def _run(argv: list[str] | None) -> int:
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
        bundles.append(build_blazeface_bundle(work, work / "signing"))
        video = make_video(work / "video" / "faces.avi", fps=25.0, seconds=8.0, empty_s=1.0).path
    console.print(f"[green]✓[/green] bundles: {', '.join(b.name for b in bundles)}")

    with console.status("starting mosquitto, the fleet API and three agents …"):
        fleet = Fleet(work, trusted_key, DEVICES, tls=args.tls).__enter__()
    try:
        console.print(f"[green]✓[/green] broker {fleet.broker.url}, fleet API {fleet.api.url}")
        console.print(sign_in(fleet))
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
            # A second model on every device, and a camera that uses it: a rollout and a profile, nothing local.
            with console.status(f"rolling out blazeface 1.0.0 and a camera profile ({CAMERA!r} on a face video) …"):
                rollout = roll_out(api, "blazeface", "1.0.0", "site=lab")
                set_up_cameras(api, video, "site=lab")
            console.print(f"[green]✓[/green] rollout {rollout['id']} of blazeface 1.0.0: {rollout['state']}; "
                          f"camera {CAMERA!r} running on every device")
            from model_tools.zoo.digits import load_split

            _, _, x_test, y_test = load_split()
            rows = device_table(api)
            faces = {r["device"]: r for r in device_table(api, "blazeface")}
            cameras = {d["id"]: (d.get("cameras") or {}).get(CAMERA, {}) for d in api.get("/v1/devices").json()}
            for i, row in enumerate(rows):
                agent = fleet.agents[row["device"]]
                digit, p = infer_digit(agent.url, "digits", x_test[i])
                stats = camera_stats(agent.url)
                row.update(prediction=digit, probability=round(p, 3), label=int(y_test[i]),
                           blazeface=f"{faces[row['device']]['version']} {faces[row['device']]['state']}",
                           camera=f"{' → '.join(cameras[row['device']].get('models', []))} {cameras[row['device']].get('state')}",
                           camera_fps=stats.get("inference_fps"), frames=stats.get("frames_processed"))
        if args.json:
            print(json.dumps(rows))
        else:
            table = Table(title="edgefleet demo: every device after digits v2 rolled out (the bad v3 was stopped), "
                                "BlazeFace beside it and a camera using it")
            for col in ("device", "digits", "predicted / label", "blazeface", f"camera {CAMERA!r}"):
                table.add_column(col)
            for r in rows:
                table.add_row(r["device"], f"{r['version']} {r['state']}", f"{r['prediction']} / {r['label']} (p={r['probability']})",
                              r["blazeface"], f"{r['camera']}, {r['camera_fps']} fps")
            console.print(table)
        if args.once:
            return 0
        console.print(f"\n{sign_in(fleet)}\nAPI docs: {fleet.api.url}/docs   devices: "
                      + "  ".join(a.url for a in fleet.agents.values()))
        console.print(f"CLI: export EDGEFLEET_SERVER={fleet.api.url} EDGEFLEET_TOKEN={fleet.api.admin_token}; edgefleet devices list")
        console.print("Running. Press Ctrl-C (or send SIGTERM) to stop every process.")
        while True:
            time.sleep(1)
    finally:
        # A second Ctrl-C / SIGTERM must not cut the stopping short and leave children behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with console.status("stopping …"):
            fleet.close()


def sign_in(fleet: Fleet) -> str:
    return f"Dashboard: [bold]{fleet.api.url}/[/bold]   sign in with the admin token [bold]{fleet.api.admin_token}[/bold]"


if __name__ == "__main__":
    sys.exit(main())
