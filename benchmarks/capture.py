"""What data capture costs the request path, side by side in one run.

The digits CNN (batch 1, one intra-op thread), the agent's in-process request path `LoadedModel.run` (what the
HTTP server and the cameras call), timed under these settings, interleaved in short blocks in a shuffled order
each round, so a busy machine hurts them alike:
  drift              the drift tap alone (always on in the agent): the baseline
  not opted in       + the sampler, `Desired.capture.enabled` false (a counter step)
  sure               + opted in, min_confidence 0: nothing qualifies (the confidence, shared with drift)
  capped             + opted in, every answer qualifies, the hourly cap reached (the decision)
  kept               + opted in, every answer qualifies and is kept: queued for the worker, which writes the
                       .npy samples to a spool on disk meanwhile (the queue drops what does not fit, counted)

    python benchmarks/capture.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODES = ("drift", "not opted in", "sure", "capped", "kept")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()

    import onnxruntime as ort

    from edge_agent.capture import Spool
    from edge_agent.runtime import golden
    from edge_agent.runtime.host import ModelHost
    from edge_agent.runtime.model import load
    from edge_agent.sampler import Sampler
    from edge_agent.store import ModelStore
    from fleet_protocol.bundle import read_bundle
    from fleet_protocol.messages import Capture, Runtime
    from fleet_protocol.signing import generate_keypair, load_public_key, sha256_file
    from model_tools.pack import pack_bundle
    from model_tools.zoo import prepare

    policies = {
        "not opted in": Capture(enabled=False),
        "sure": Capture(enabled=True, min_confidence=0.0, blur_faces=False),
        "capped": Capture(enabled=True, min_confidence=1.0, blur_faces=False, max_per_hour=0),
        "kept": Capture(enabled=True, min_confidence=1.0, blur_faces=False, max_per_hour=100_000,
                        max_bytes_per_day=1024**4),
    }
    per_round = 50
    rounds = 4 if args.quick else args.rounds
    shuffle = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="edgefleet-capture-") as tmp:
        tmp_path = Path(tmp)
        private, public = generate_keypair()
        store = ModelStore(tmp_path / "store")
        zoo = prepare("digits", variant="e20", epochs=20)
        path, _ = pack_bundle(zoo.onnx, name="digits", version="1.0.0", golden_inputs=zoo.golden_inputs,
                              private_key_pem=private, out_dir=tmp_path / "bundles", task=zoo.task, labels=zoo.labels,
                              preprocessing=zoo.preprocessing)
        sha = sha256_file(path)
        read_bundle(path, [load_public_key(public)], extract_to=store.models / sha)
        stored = store.get(sha)
        assert stored is not None
        live = load(stored, Runtime(providers=["CPUExecutionProvider"], intra_op_threads=1), cache_dir=store.cache)
        golden.check(live)
        host = ModelHost()
        sampler = host.sampler = Sampler(Spool(tmp_path / "spool"), queue_size=8).start()
        host.swap(live)  # binds metrics, the drift histograms and the sampler
        xs = [np.random.default_rng(i).random((1, 1, 8, 8), dtype=np.float32) for i in range(16)]
        times: dict[str, list[float]] = {m: [] for m in MODES}
        for _ in range(50):  # warm-up
            live.run({"image": xs[0]})
        for _ in range(rounds):
            for mode in [MODES[k] for k in shuffle.permutation(len(MODES))]:
                live.sampler = None if mode == "drift" else sampler
                if mode in policies:
                    sampler.update(policies[mode])
                out = times[mode]
                for i in range(per_round):
                    feed = {"image": xs[i % len(xs)]}
                    t0 = time.perf_counter()
                    live.run(feed)
                    out.append((time.perf_counter() - t0) * 1e6)
        sampler.stop()
        print(f"data capture on the request path: onnxruntime {ort.__version__}, digits CNN batch 1, "
              f"{rounds} shuffled rounds x {per_round} requests per setting")
        base = float(np.median(times["drift"]))
        print(f"{'setting':14s} {'p50 us':>8s} {'p95 us':>8s} {'p50 vs drift':>13s}")
        for mode in MODES:
            t = np.asarray(times[mode])
            p50 = float(np.median(t))
            print(f"{mode:14s} {p50:8.1f} {float(np.percentile(t, 95)):8.1f} {p50 - base:+11.1f} us")
        print(f"kept {dict(sampler.kept)}, not kept {dict(sampler.skipped)}, spooled {len(sampler.spool)} "
              f"({sampler.spool.total_bytes} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
