"""The live path with and without a shadow candidate, side by side in one run.

For each model (the digits CNN and BlazeFace, batch 1, one intra-op thread), the agent's in-process request path
`LoadedModel.run` (what the HTTP server and the camera pipelines call) is timed under four settings, interleaved
in many short blocks, in a shuffled order each round, so a busy machine hurts them alike:
  bare         no taps at all (no drift histograms, no shadow)
  drift        the per-model confidence and brightness histograms (always on in the agent)
  shadow 10%   drift + a shadow candidate (the same network, its own session) at sample_rate 0.1, cpu_budget 0.1
  shadow 100%  drift + a shadow candidate at sample_rate 1.0, cpu_budget 0.5 (the most a rollout may ask)
The candidate runs on the runner's worker thread; the table also shows how many samples it compared and how
many the CPU budget skipped.

    python benchmarks/shadow.py [--quick] [--models digits,blazeface]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODES = ("bare", "drift", "shadow 10%", "shadow 100%")


def bundle(name: str, out: Path, key_pem: bytes, version: str) -> Path:
    from model_tools.pack import pack_bundle
    from model_tools.zoo import prepare

    zoo = prepare("digits", variant="e20", epochs=20) if name == "digits" else prepare(name)
    path, _ = pack_bundle(zoo.onnx, name=name, version=version, golden_inputs=zoo.golden_inputs, private_key_pem=key_pem,
                          out_dir=out / version, task=zoo.task, labels=zoo.labels, preprocessing=zoo.preprocessing,
                          extra=getattr(zoo, "extra", None) or {})
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,blazeface")
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()

    import onnxruntime as ort

    from edge_agent.runtime import golden
    from edge_agent.runtime.host import ModelHost
    from edge_agent.runtime.model import load
    from edge_agent.shadow.compare import comparer_for
    from edge_agent.shadow.runner import SHADOW_NICE, ShadowRunner
    from edge_agent.store import ModelStore
    from fleet_protocol.bundle import read_bundle
    from fleet_protocol.messages import Runtime
    from fleet_protocol.signing import generate_keypair, load_public_key, sha256_file

    per_round = 50
    rounds = 4 if args.quick else args.rounds
    shuffle = np.random.default_rng(0)
    runtime = Runtime(providers=["CPUExecutionProvider"], intra_op_threads=1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-shadow-") as tmp:
        tmp_path = Path(tmp)
        private, public = generate_keypair()
        store = ModelStore(tmp_path / "store")

        def stored(name: str, version: str):
            path = bundle(name, tmp_path / "bundles" / name, private, version)
            sha = sha256_file(path)
            read_bundle(path, [load_public_key(public)], extract_to=store.models / sha)
            return store.get(sha)

        for name in args.models.split(","):
            live = load(stored(name, "1.0.0"), runtime, cache_dir=store.cache)
            candidate = load(stored(name, "1.1.0"), runtime, cache_dir=store.cache)
            golden.check(live)
            golden.check(candidate)
            host = ModelHost()
            host.swap(live)  # binds metrics and the drift histograms
            drift = live.drift
            input_name = next(iter(live.inputs))
            shape = [1 if d is None else d for d in live.inputs[input_name].shape]
            xs = [np.random.default_rng(i).random(shape, dtype=np.float32) for i in range(16)]
            names = candidate.output_names

            def run_candidate(feeds, candidate=candidate, names=names):
                out = candidate.run_checked(dict(feeds))
                return [out[n] for n in names]

            runners = {
                "shadow 10%": ShadowRunner("1.1.0", run_candidate, comparer_for(live.manifest.task), sample_rate=0.1,
                                           cpu_budget=0.1),
                "shadow 100%": ShadowRunner("1.1.0", run_candidate, comparer_for(live.manifest.task), sample_rate=1.0,
                                            cpu_budget=0.5),
            }
            for r in runners.values():
                r.start()
            times: dict[str, list[float]] = {m: [] for m in MODES}
            for _ in range(50):  # warm-up
                live.run({input_name: xs[0]})
            for _ in range(rounds):
                order = [MODES[k] for k in shuffle.permutation(len(MODES))]
                for mode in order:
                    live.drift = None if mode == "bare" else drift
                    live.shadow = runners.get(mode)
                    time.sleep(0.02)  # the previous mode's queued shadow work drains
                    out = times[mode]
                    for i in range(per_round):
                        feed = {input_name: xs[i % len(xs)]}
                        t0 = time.perf_counter()
                        live.run(feed)
                        out.append((time.perf_counter() - t0) * 1000)
            live.shadow = None
            stats = {m: runners[m].telemetry() for m in runners}
            for r in runners.values():
                r.stop()
            base = float(np.percentile(times["bare"], 50))
            for mode in MODES:
                p50, p95 = (float(v) for v in np.percentile(times[mode], [50, 95]))
                t = stats.get(mode)
                rows.append((name, mode, p50, p95, (p50 / base - 1) * 100,
                             f"{t.samples} / {t.dropped}" if t else "-",
                             f"{t.agreement:.3f}" if t and t.agreement is not None else "-"))

    print(f"live path with and without a shadow candidate: onnxruntime {ort.__version__}, {os.cpu_count()} CPUs, "
          f"batch 1, 1 intra-op thread, {rounds} shuffled rounds x {per_round} requests per setting; the candidate's "
          f"thread at nice {SHADOW_NICE}")
    print(f"{'model':<10} {'setting':<12} {'p50 ms':>8} {'p95 ms':>8} {'p50 vs bare':>12} {'compared/skipped':>17} "
          f"{'agreement':>10}")
    for name, mode, p50, p95, delta, counts, agree in rows:
        print(f"{name:<10} {mode:<12} {p50:>8.3f} {p95:>8.3f} {delta:>+11.1f}% {counts:>17} {agree:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
