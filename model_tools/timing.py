"""Latency that survives a noisy machine: variants timed in interleaved rounds, a median with its spread.

Timing one variant after another lets the machine's drift (another process, a CPU's clock, a neighbour on a
shared VM) fall on one variant and not the next; on a 2-vCPU VM one fp32 model timed seven times ranged
0.88-1.12x of itself. Here every round times every variant once, in an order that rotates from round to round,
so drift lands on all of them alike; each round gives one median per variant, and a variant counts as faster
than another only when its slowest round median beats the other's fastest one by the required factor.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Timing:
    samples_ms: list[float] = field(default_factory=list)
    rounds_ms: list[float] = field(default_factory=list)  # the median of each round

    @property
    def p50(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def spread(self) -> tuple[float, float]:
        """(fastest, slowest) round median."""
        return min(self.rounds_ms), max(self.rounds_ms)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.samples_ms)
        k = (len(ordered) - 1) * q / 100
        lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)

    def summary(self) -> dict[str, float | int | list[float]]:
        lo, hi = self.spread
        return {"p50_ms": round(self.p50, 4), "p95_ms": round(self.percentile(95), 4),
                "p99_ms": round(self.percentile(99), 4), "spread_ms": [round(lo, 4), round(hi, 4)],
                "rounds": len(self.rounds_ms), "runs": len(self.samples_ms)}


def interleaved(runners: dict[str, Callable[[], object]], *, rounds: int = 5, runs_per_round: int = 10,
                warmup: int = 3, clock: Callable[[], float] = time.perf_counter) -> dict[str, Timing]:
    """Time every runner `rounds` × `runs_per_round` times, round by round, the order rotating each round."""
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    out = {name: Timing() for name in names}
    for r in range(rounds):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            run, this = runners[name], []
            for _ in range(runs_per_round):
                t0 = clock()
                run()
                this.append((clock() - t0) * 1000)
            out[name].samples_ms.extend(this)
            out[name].rounds_ms.append(statistics.median(this))
    return out


def faster(base: Timing, other: Timing, factor: float = 1.0) -> bool:
    """Whether `other` beats `base` by `factor` across the whole spread: its slowest round median times the
    factor is still no slower than base's fastest round median."""
    return other.spread[1] * factor <= base.spread[0]


def speedup_range(base: Timing, other: Timing) -> tuple[float, float]:
    """The speedup of `other` over `base` at the two ends of their spreads (worst case, best case)."""
    return base.spread[0] / other.spread[1], base.spread[1] / other.spread[0]
