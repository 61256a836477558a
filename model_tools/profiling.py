"""Where memory and time go: peak memory of a variant (in a fresh process) and onnxruntime's per-operator profile.

Peak memory is measured in a child process of its own, because a process's high-water mark never comes down:
measured in-process, every variant after the first would inherit the largest so far. The child reports its
peak RSS after imports (the interpreter, numpy, onnxruntime) and after loading the model and running it, so
the difference is what the model itself costs.

    python -m model_tools.profiling MODEL FEED.npz [--provider P] [--threads N]   (prints JSON)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, cast

import numpy as np

from .session import create as create_session


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Linux: reset the peak-RSS mark (VmHWM) to the current RSS, so the peak measured next is the model's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _maxrss_mb() -> float:
    """The process's peak RSS. VmHWM, not getrusage's ru_maxrss: that one survives exec, so a child of a large
    parent (a benchmark that trained a model) would report the parent's peak."""
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / 1024 / (1024 if sys.platform == "darwin" else 1)


def peak_memory(model: Path, sample: dict[str, np.ndarray], *, provider: str = "CPUExecutionProvider",
                threads: int = 1, timeout: float = 300) -> dict[str, float] | None:
    """{"peak_rss_mb", "baseline_rss_mb", "model_mb"} of loading `model` and running it on `sample`, or None
    when the child could not say (the report then shows no number rather than a wrong one)."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-mem-") as tmp:
        feed = Path(tmp) / "feed.npz"
        np.savez(feed, **cast(dict[str, Any], sample))  # numpy's stubs match ** against allow_pickle too
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(Path(__file__).resolve().parent.parent),
                                                                      os.environ.get("PYTHONPATH", "")] if p)}
        try:
            out = subprocess.run([sys.executable, "-m", "model_tools.profiling", str(model), str(feed), "--provider",
                                  provider, "--threads", str(threads)], capture_output=True, text=True,
                                 timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return None
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _child(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m model_tools.profiling")
    ap.add_argument("model")
    ap.add_argument("feed")
    ap.add_argument("--provider", default="CPUExecutionProvider")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import onnxruntime  # noqa: F401 - loaded before the baseline, so model_mb holds the model and not the library

    with np.load(args.feed, allow_pickle=False) as z:
        feed = {k: z[k] for k in z.files}
    _reset_peak()
    baseline = _status_mb("VmRSS") or _maxrss_mb()
    sess = create_session(args.model, provider=args.provider, threads=args.threads)
    for _ in range(3):
        sess.run(None, feed)
    peak = _maxrss_mb()
    print(json.dumps({"peak_rss_mb": round(peak, 1), "baseline_rss_mb": round(baseline, 1),
                      "model_mb": round(peak - baseline, 1)}))
    return 0


def operator_profile(model: Path, sample: dict[str, np.ndarray], *, provider: str = "CPUExecutionProvider",
                     threads: int = 1, runs: int = 20, keep: Path | None = None, top: int = 12) -> list[dict[str, Any]]:
    """onnxruntime's profiler over `runs` inferences → time per operator type, largest first.

    Each row: op, nodes (how many nodes of that type), ms_per_run (its nodes' time in one inference, the median
    over the runs) and share (of all operator time). `keep` receives the raw trace (chrome://tracing / Perfetto format).
    """
    with tempfile.TemporaryDirectory(prefix="edgefleet-prof-") as tmp:
        sess = create_session(model, provider=provider, threads=threads, enable_profiling=True,
                              profile_file_prefix=str(Path(tmp) / "profile"))
        for _ in range(3):  # warm-up runs are profiled too; they are dropped below by counting from the end
            sess.run(None, sample)
        for _ in range(runs):
            sess.run(None, sample)
        trace_path = Path(sess.end_profiling())
        events = json.loads(trace_path.read_text())
        if keep is not None:
            keep.parent.mkdir(parents=True, exist_ok=True)
            keep.write_text(json.dumps(events))
    node_events = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    calls: dict[str, int] = defaultdict(int)
    for e in node_events:
        calls[e["name"].removesuffix("_kernel_time")] += 1
    skip = max(0, max(calls.values(), default=0) - runs)  # the warm-up runs come first
    # ms per (op type, run): the median over runs, not the mean, so a run the machine stalled does not count
    per_run: dict[str, list[float]] = defaultdict(lambda: [0.0] * runs)
    nodes: dict[str, set[str]] = defaultdict(set)
    seen: dict[str, int] = defaultdict(int)
    for e in node_events:
        node = e["name"].removesuffix("_kernel_time")
        seen[node] += 1
        run = seen[node] - skip - 1
        if not 0 <= run < runs:
            continue
        op = e.get("args", {}).get("op_name", "?")
        per_run[op][run] += float(e.get("dur", 0)) / 1000  # µs → ms
        nodes[op].add(node)
    medians = {op: float(np.median(v)) for op, v in per_run.items()}
    total = sum(medians.values()) or 1.0
    rows = [{"op": op, "nodes": len(nodes[op]), "ms_per_run": round(ms, 4), "share": round(ms / total, 4)}
            for op, ms in sorted(medians.items(), key=lambda kv: -kv[1])]
    return rows[:top]


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
