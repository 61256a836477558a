"""The rules the insights evaluate: thresholds, windows and the confidence each prediction must reach."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Rules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- when will the disk / memory be full ----------------------------------------------------------------
    disk_used_ratio: float = Field(default=0.9, gt=0, le=1)  # used / total of the model store's file system
    memory_used_ratio: float = Field(default=0.9, gt=0, le=1)
    horizon_s: float = Field(default=24 * 3600, gt=0)  # crossings predicted further ahead are not alerted
    trend_window_s: float = Field(default=3 * 3600, gt=0)  # the recent past a trend is fitted on
    trend_min_points: int = Field(default=20, ge=3)
    trend_min_span_s: float = Field(default=1800, ge=0)
    # Confidence condition: the 95 % interval of the Theil–Sen slope must be positive and narrow, at most this
    # share of the slope either side. Noise gives wide intervals around 0; a real fill gives a tight one, so the
    # predicted crossing is then known to about this share too.
    max_slope_rel_error: float = Field(default=0.1, gt=0)
    max_fit_points: int = Field(default=120, ge=10)  # longer windows are reduced to bucket medians first

    # --- latency creep: p95 drifting up over hours on one version -----------------------------------------
    creep_window_s: float = Field(default=6 * 3600, gt=0)
    creep_min_span_s: float = Field(default=2 * 3600, ge=0)
    creep_min_increase: float = Field(default=0.2, gt=0)  # relative rise of the fitted p95 over the window
    creep_max_slope_rel_error: float = Field(default=0.5, gt=0)

    # --- anomalies against the device's own baseline (per model version) -----------------------------------
    anomaly_z: float = Field(default=6.0, gt=0)  # robust z-score (median / MAD) of the EWMA above which it fires
    ewma_alpha: float = Field(default=0.3, gt=0, le=1)
    baseline_points: int = Field(default=240, ge=10)
    baseline_min_points: int = Field(default=30, ge=5)
    # The unit of the z-score is at least this (a steady baseline has a MAD near 0, and any blip would look
    # infinitely unusual): latency must rise anomaly_z × 5 % of its median, the error rate anomaly_z × 0.2 points.
    latency_floor_rel: float = Field(default=0.05, ge=0)
    error_rate_floor: float = Field(default=0.002, ge=0)
    min_requests: int = Field(default=20, ge=1)  # windows with fewer requests say nothing about an error rate

    # --- lifecycle -----------------------------------------------------------------------------------------
    for_s: float = Field(default=600, ge=0)  # pending → firing once the condition held this long
    keep_firing_for_s: float = Field(default=900, ge=0)  # firing → resolved once it stayed false this long
    stale_s: float = Field(default=900, gt=0)  # a device silent this long is not evaluated (no news is no news)
    history_points: int = Field(default=4096, ge=100)  # samples kept per series and device (memory bound)
