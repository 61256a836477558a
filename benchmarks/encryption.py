"""What an encrypted model costs the agent at load time, measured in one run, side by side with plaintext.

The same ~100 MB model (agent_overhead.py's chain of 2048×2048 MatMuls) packed twice, in plaintext and with
`--encrypt`, and loaded the agent's way, each in a fresh process, several times:
  plaintext  create_session from the model file + golden check
  encrypted  unwrap the data key, read the ciphertext, AES-256-GCM decrypt into memory, create_session from those
             bytes (no engine or graph cache on disk) + golden check
Printed: load time (median, and the decryption's share), peak RSS growth during the load, steady RSS after.

    python benchmarks/encryption.py [--runs 3] [--mb 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.agent_overhead import _PeakSampler, _rss_mb, big_model  # noqa: E402 - after the sys.path entry above


def measure(how: str, data_dir: str, sha: str) -> dict:
    """In a fresh process: load time, decryption time, RSS peak and steady growth over the process before."""
    import gc

    import onnxruntime  # noqa: F401  (imported before the baseline: its own memory is not the load's)

    from edge_agent.keys import ModelKeys
    from edge_agent.runtime import golden
    from edge_agent.runtime.model import load
    from edge_agent.store import ModelStore
    from fleet_protocol.messages import Runtime

    store = ModelStore(Path(data_dir))
    stored = store.get(sha)
    assert stored is not None
    keys = ModelKeys(Path(data_dir))
    runtime = Runtime(providers=["CPUExecutionProvider"], intra_op_threads=1)
    gc.collect()
    before = _rss_mb()
    decrypt_s = 0.0
    with _PeakSampler() as sampler:
        started = time.perf_counter()
        plaintext = None
        if how == "encrypted":
            plaintext = keys.decrypt(stored.sha256, stored.manifest, stored.model_path)
            decrypt_s = time.perf_counter() - started
        model = load(stored, runtime, cache_dir=store.cache, plaintext=plaintext)
        del plaintext
        golden.check(model)
        load_s = time.perf_counter() - started
    gc.collect()
    steady = _rss_mb()
    return {"load_s": load_s, "decrypt_s": decrypt_s, "peak": sampler.peak - before, "steady": steady - before}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="fresh-process loads per variant (median shown)")
    parser.add_argument("--mb", type=int, default=100, help="model size")
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return 0

    from edge_agent.keys import ModelKeys
    from fleet_protocol.bundle import read_bundle
    from fleet_protocol.encryption import b64d, wrap_key
    from fleet_protocol.signing import generate_keypair, load_public_key, sha256_file
    from model_tools.pack import key_path, pack_bundle

    with tempfile.TemporaryDirectory(prefix="edgefleet-enc-bench-") as tmp:
        tmp_path = Path(tmp)
        private, public = generate_keypair()
        onnx_path, golden_inputs = big_model(tmp_path / "big", mb=args.mb)
        size = onnx_path.stat().st_size / 2**20
        data_dir = tmp_path / "device"
        keys = ModelKeys(data_dir)  # the device key pair, as the agent makes it
        shas, pack_s = {}, {}
        for how in ("plaintext", "encrypted"):
            started = time.perf_counter()
            bundle, manifest = pack_bundle(onnx_path, name="big", version="1.0.0" if how == "plaintext" else "2.0.0", golden_inputs=golden_inputs,
                                           private_key_pem=private, out_dir=tmp_path / "bundles", encrypt=how == "encrypted")
            pack_s[how] = time.perf_counter() - started
            sha = sha256_file(bundle)
            read_bundle(bundle, [load_public_key(public)], extract_to=data_dir / "models" / sha)
            if manifest.encryption is not None:
                secret = json.loads(key_path(bundle).read_text())
                keys.remember(sha, wrap_key(b64d(secret["key"]), secret["key_id"], keys.public_key))
            shas[how] = sha
        results: dict[str, list[dict]] = {how: [] for how in shas}
        for _ in range(args.runs):
            for how, sha in shas.items():  # interleaved, so a busy moment does not fall on one variant only
                out = subprocess.run([sys.executable, __file__, "--measure", how, str(data_dir), sha],
                                     capture_output=True, text=True, check=True)
                results[how].append(json.loads(out.stdout.strip().splitlines()[-1]))

    def med(how: str, key: str) -> float:
        return statistics.median(r[key] for r in results[how])

    print(f"loading a {size:.0f} MB model (MatMul chain) the agent's way, CPU, each load in a fresh process, "
          f"median of {args.runs}; RSS growth over the process before the load")
    print(f"{'':<10} {'load s':>8} {'decrypt s':>10} {'peak MB':>8} {'x model':>8} {'steady MB':>10} {'x model':>8} {'pack s':>7}")
    for how in ("plaintext", "encrypted"):
        print(f"{how:<10} {med(how, 'load_s'):8.2f} {med(how, 'decrypt_s'):10.2f} {med(how, 'peak'):8.0f} "
              f"{med(how, 'peak') / size:8.2f} {med(how, 'steady'):10.0f} {med(how, 'steady') / size:8.2f} {pack_s[how]:7.2f}")
    p, e = "plaintext", "encrypted"
    print(f"encrypted over plaintext: load {med(e, 'load_s') - med(p, 'load_s'):+.2f} s, "
          f"peak {(med(e, 'peak') - med(p, 'peak')) / size:+.2f}x, steady {(med(e, 'steady') - med(p, 'steady')) / size:+.2f}x "
          "of the model's size")
    return 0


if __name__ == "__main__":
    sys.exit(main())
