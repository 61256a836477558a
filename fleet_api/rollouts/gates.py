"""A rollout's gates: one model, used by the HTTP route to validate and by the rollout machine to judge."""

from __future__ import annotations

from pydantic import Field

from ..strict import StrictModel

DAY = 86_400.0


class Gates(StrictModel):
    # share of a wave that must serve the new version before the next wave starts
    min_success_ratio: float = Field(default=1.0, ge=0, le=1)
    # share of a wave that may fail before the rollout aborts by itself
    max_failure_ratio: float = Field(default=0.0, ge=0, le=1)
    # time a wave must stay healthy after reaching its success ratio
    soak_s: float = Field(default=0.0, ge=0, le=30 * DAY)
    # Devices taking the bundle at once (told to, no verdict yet); the rest of a started wave wait for a slot, which
    # a verdict (succeeded or failed) frees. It bounds the download burst a big wave puts on site brokers, whose
    # memory grows with the devices downloading at once (docs/scale.md). None: a wave's devices are all told at once.
    max_concurrent: int | None = Field(default=None, ge=1, le=10_000_000)
    # a wave that has not passed by then aborts the rollout (waiting for slots included)
    wave_timeout_s: float = Field(default=1800.0, gt=0, le=30 * DAY)
    # Health during the soak (None: not checked). The wave's mean p95 on the new version may exceed the previous
    # version's by at most this many percent; its error rate (errors / requests) must stay at or below the limit.
    max_p95_increase_pct: float | None = Field(default=None, ge=0, le=100_000)
    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    # how far back the previous version's telemetry is taken for the baseline
    baseline_window_s: float = Field(default=3600.0, gt=0, le=30 * DAY)
    # Shadow mode only (a rollout with `shadow`): each device of a wave must have compared the candidate with the
    # live model on at least this many of its own inputs, agreeing at least this much (task-aware: top-1, box
    # F1, characters), its p95 on them at most this many ms (None: not checked), before the wave serves it.
    min_shadow_samples: int = Field(default=100, ge=1, le=10_000_000)
    min_shadow_agreement: float = Field(default=0.98, ge=0, le=1)
    max_shadow_p95_ms: float | None = Field(default=None, gt=0, le=3_600_000)
