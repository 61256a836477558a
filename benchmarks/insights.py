"""Insights: how well the predictions hold, how often noise raises an alert, what the failure analysis names.

    python benchmarks/insights.py [--device-hours 1000] [--fleets 200] [--json]

Simulated devices send real Telemetry v2 messages (fleet_api/insights/simulate.py) into the insights core on
an injected clock: one message a minute, an evaluation every 5 minutes. Tables, side by side in one run:
1. disks filling at known rates: when the alert fired, what it predicted, the truth, the error, the lead time;
2. false alerts on flat noisy devices per 1,000 device-hours, with the default rules and with the confidence
   conditions switched off ("naive": any positive slope, z > 3, no `for`);
3. failure analysis on random and planted fleets; 4. the cost of observe and evaluate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet_api.insights.alerts import AlertState
from fleet_api.insights.config import Rules
from fleet_api.insights.core import Insights
from fleet_api.insights.failures import DeviceFacts, analyze
from fleet_api.insights.simulate import SimDevice, flat_fleet

T0 = 1_800_000_000.0
STEP_S, EVAL_S = 60.0, 300.0
NAIVE = Rules(max_slope_rel_error=1e9, creep_max_slope_rel_error=1e9, anomaly_z=3.0, for_s=0, creep_min_increase=0.1)


def simulate(insights: Insights, devices: list[SimDevice], hours: float) -> tuple[dict, float, float, int, int]:
    """Runs the fleet; returns first firing per (device, kind) as (t, predicted_at), and timings."""
    first: dict = {}
    observe_s = evaluate_s = 0.0
    messages = evaluations = 0
    for k in range(int(hours * 3600 / STEP_S) + 1):
        t = k * STEP_S
        for d in devices:
            m = d.telemetry(t, window_s=STEP_S, ts=T0)
            a = time.perf_counter()
            insights.observe(d.id, m, T0 + t)
            observe_s += time.perf_counter() - a
            messages += 1
        if t % EVAL_S == 0:
            a = time.perf_counter()
            changed = insights.evaluate(T0 + t)
            evaluate_s += time.perf_counter() - a
            evaluations += len(devices)
            for al in changed:
                if al.state == AlertState.firing:
                    first.setdefault((al.device_id, al.kind.value), (t, None if al.predicted_at is None else al.predicted_at - T0))
    return first, observe_s, evaluate_s, messages, evaluations


def prediction_table() -> list[dict]:
    devices = [
        SimDevice("fill-2%/h", seed=1, disk_start=0.45, disk_rate_per_h=0.02),
        SimDevice("fill-5%/h", seed=2, disk_start=0.40, disk_rate_per_h=0.05),
        SimDevice("fill-10%/h", seed=3, disk_start=0.50, disk_rate_per_h=0.10),
        SimDevice("fill-20%/h", seed=6, disk_start=0.30, disk_rate_per_h=0.20),
        SimDevice("late-6%/h@4h", seed=4, disk_start=0.40, disk_rate_per_h=0.06, disk_fill_from_s=4 * 3600),
        SimDevice("noisy-4%/h", seed=5, disk_start=0.30, disk_rate_per_h=0.04, disk_noise=0.006, disk_spike_p=0.05),
        SimDevice("slow-1%/h", seed=7, disk_start=0.55, disk_rate_per_h=0.01),
    ]
    rules = Rules()
    first, *_ = simulate(Insights(rules), devices, 40)
    rows = []
    for d in devices:
        truth = d.disk_crossing(rules.disk_used_ratio)
        fired = first.get((d.id, "disk_full"))
        row = {"device": d.id, "truth_h": truth / 3600, "fired_h": None, "predicted_h": None, "error_pct": None, "lead_h": None}
        if fired:
            t, pred = fired
            row.update(fired_h=t / 3600, predicted_h=pred / 3600, lead_h=(truth - t) / 3600,
                       error_pct=100 * (pred - truth) / (truth - t) if truth > t else None)
        rows.append(row)
    return rows


def false_alert_table(device_hours: float) -> list[dict]:
    n = 20
    hours = device_hours / n
    rows = []
    for name, rules in (("default", Rules()), ("naive", NAIVE)):
        first, obs, ev, messages, evaluations = simulate(Insights(rules), flat_fleet(n, seed=7), hours)
        kinds: dict[str, int] = {}
        for (_, kind) in first:
            kinds[kind] = kinds.get(kind, 0) + 1
        rows.append({"rules": name, "device_hours": n * hours, "false_alerts": len(first),
                     "per_1000_device_hours": len(first) * 1000 / (n * hours), "by_kind": kinds,
                     "observe_us": obs / messages * 1e6, "evaluate_ms_per_device": ev / evaluations * 1e3})
    return rows


PROVIDER = {"jetson-orin": "TensorrtExecutionProvider", "jetson-nano": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def fleet(rng, n: int, planted: str | None, share: float) -> list[DeviceFacts]:
    out = []
    for i in range(n):
        hw = str(rng.choice(list(PROVIDER), p=[0.2, 0.3, 0.5]))
        failed = (hw == planted and rng.random() < share) if planted else bool(rng.random() < 0.15)
        out.append(DeviceFacts(f"d{i}", failed, {"hw": hw, "provider": PROVIDER[hw], "site": str(rng.choice(["a", "b", "c"])),
                                                 "agent_version": str(rng.choice(["0.3", "0.4"])),
                                                 "onnxruntime_version": str(rng.choice(["1.17", "1.18"]))}))
    return out


def analysis_table(fleets: int) -> list[dict]:
    rows = []
    for n in (20, 50, 200):
        for planted, share in ((None, 0.0), ("jetson-orin", 1.0), ("jetson-orin", 0.5)):
            rng = np.random.default_rng(n)
            named = first_right = 0
            a = time.perf_counter()
            for _ in range(fleets):
                result = analyze(fleet(rng, n, planted, share))
                if result.findings:
                    named += 1
                    first_right += planted is not None and ("hw", planted) in result.findings[0].feature_set
            rows.append({"devices": n, "failures": "random 15 %" if planted is None else f"{share:.0%} of hw={planted}",
                         "fleets": fleets, "named_something": named, "named_planted_first": first_right if planted else None,
                         "ms_per_analysis": (time.perf_counter() - a) / fleets * 1e3})
    return rows


def fmt(v, spec: str) -> str:
    width = int("".join(c for c in spec.split(".")[0] if c.isdigit()) or 0)
    return "-".rjust(width) if v is None else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device-hours", type=float, default=1000.0, help="flat noisy device-hours per rule set")
    ap.add_argument("--fleets", type=int, default=200, help="simulated fleets per failure-analysis row")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = ap.parse_args()
    result = {"predictions": prediction_table(), "false_alerts": false_alert_table(args.device_hours),
              "failure_analysis": analysis_table(args.fleets)}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print("1. disks filling at known rates (threshold 90 %; error relative to the time left when it fired)")
    print(f"{'device':<14}{'truth h':>9}{'fired h':>9}{'predicted h':>13}{'error %':>9}{'lead h':>8}")
    for r in result["predictions"]:
        print(f"{r['device']:<14}{r['truth_h']:>9.2f}{fmt(r['fired_h'], '9.2f')}{fmt(r['predicted_h'], '13.2f')}"
              f"{fmt(r['error_pct'], '+9.1f')}{fmt(r['lead_h'], '8.2f')}")
    print("\n2. false alerts on flat noisy devices")
    print(f"{'rules':<9}{'device-h':>9}{'false':>7}{'per 1000 h':>12}{'observe µs':>12}{'eval ms/dev':>13}  by kind")
    for r in result["false_alerts"]:
        print(f"{r['rules']:<9}{r['device_hours']:>9.0f}{r['false_alerts']:>7}{r['per_1000_device_hours']:>12.1f}"
              f"{r['observe_us']:>12.0f}{r['evaluate_ms_per_device']:>13.2f}  {r['by_kind']}")
    print("\n3. failure analysis (Fisher's exact, Benjamini–Hochberg, significance 0.05)")
    print(f"{'devices':>8}  {'failures':<28}{'fleets':>7}{'named any':>11}{'planted 1st':>13}{'ms':>8}")
    for r in result["failure_analysis"]:
        print(f"{r['devices']:>8}  {r['failures']:<28}{r['fleets']:>7}{r['named_something']:>11}"
              f"{fmt(r['named_planted_first'], '13d')}{r['ms_per_analysis']:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
