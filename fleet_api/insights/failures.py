"""Failure analysis: what do the devices that failed a wave share that the ones that succeeded do not?

Every device is described by features (its labels, hardware class, execution provider, agent and onnxruntime
versions). For each feature, and each pair of features, a one-sided Fisher's exact test asks whether failures
are over-represented among the devices that have it; the p-values are corrected for testing many features at
once (Benjamini–Hochberg, scipy's false_discovery_control). Features that pick exactly the same devices (all
jetson-orin devices run TensorRT) are one finding named by all of them. Random failures: nothing significant.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import false_discovery_control, fisher_exact

SIGNIFICANCE = 0.05  # on the corrected p-value
MAX_FINDINGS = 5
MAX_FEATURES = 200  # distinct feature values considered (pairs grow with its square)

Feature = tuple[str, str]  # (key, value), e.g. ("hw", "jetson-orin"), ("provider", "TensorrtExecutionProvider")


@dataclass(frozen=True)
class DeviceFacts:
    device_id: str
    failed: bool
    features: Mapping[str, str]  # key → value


@dataclass(frozen=True)
class Finding:
    features: tuple[tuple[Feature, ...], ...]  # alternatives that select the same devices; each a conjunction
    failed_with: int  # failures among the devices that have the features
    devices_with: int
    failed_without: int
    devices_without: int
    odds_ratio: float
    p_value: float  # one-sided Fisher's exact test
    p_adjusted: float  # Benjamini–Hochberg over every feature and pair tested
    others: tuple[tuple[str, int, int], ...] = ()  # the other values of the same key: (feature, failed, devices)

    @property
    def name(self) -> str:
        # Alternatives select the same devices, so "hw=jetson-orin with TensorrtExecutionProvider" says both.
        return " with ".join(" and ".join(_show(f) for f in conj) for conj in self.features)

    @property
    def feature_set(self) -> frozenset[Feature]:
        return frozenset(f for conj in self.features for f in conj)

    def sentence(self, failures: int) -> str:
        rest = "; ".join(f"{failed} of {n} on {name}" for name, failed, n in self.others) or \
            f"{self.failed_without} of {self.devices_without} elsewhere"
        return (f"{self.failed_with} of {failures} failures on {self.name} ({self.failed_with} of {self.devices_with} "
                f"devices there failed); {rest} (Fisher p={self.p_value:.2g}, adjusted {self.p_adjusted:.2g})")

    def view(self, failures: int) -> dict[str, Any]:
        return {
            "features": [[f"{k}={v}" for k, v in conj] for conj in self.features], "name": self.name,
            "failed_with": self.failed_with, "devices_with": self.devices_with, "failed_without": self.failed_without,
            "devices_without": self.devices_without, "odds_ratio": self.odds_ratio if np.isfinite(self.odds_ratio) else None,
            "p_value": self.p_value, "p_adjusted": self.p_adjusted, "summary": self.sentence(failures),
            "others": [{"feature": n, "failed": f, "devices": d} for n, f, d in self.others],
        }


@dataclass(frozen=True)
class Analysis:
    failed: int
    succeeded: int
    tested: int  # hypotheses tested (features and pairs)
    findings: list[Finding] = field(default_factory=list)  # significant ones, most significant first

    @property
    def summary(self) -> str:
        if not self.failed:
            return "no failures to analyse"
        if not self.findings:
            return (f"nothing over-represented among the {self.failed} failures (of {self.failed + self.succeeded} "
                    f"devices, {self.tested} features tested)")
        return self.findings[0].sentence(self.failed)

    def view(self) -> dict[str, Any]:
        return {"failed": self.failed, "succeeded": self.succeeded, "tested": self.tested, "summary": self.summary,
                "findings": [f.view(self.failed) for f in self.findings]}


def _order(f: Feature) -> tuple[int, str, str]:
    """hw first, then the other labels, the provider, versions, reported hardware."""
    rank = {"hw": 0, "provider": 2, "agent_version": 3, "onnxruntime_version": 3}.get(f[0], 4 if f[0].startswith("hardware.") else 1)
    return (rank, f[0], f[1])


def _show(f: Feature) -> str:
    return f[1] if f[0] == "provider" else f"{f[0]}={f[1]}"


def analyze(devices: Iterable[DeviceFacts], pairs: bool = True) -> Analysis:
    devices = list(devices)
    failed = np.array([d.failed for d in devices], bool)
    n_failed, n = int(failed.sum()), len(devices)
    if n_failed == 0 or n_failed == n:
        return Analysis(n_failed, n - n_failed, 0)  # nothing to contrast
    # Each feature → the set of devices that have it (a boolean mask over `devices`).
    masks: dict[Feature, np.ndarray] = {}
    for i, d in enumerate(devices):
        for k, v in d.features.items():
            if v in (None, ""):
                continue
            masks.setdefault((k, str(v)), np.zeros(n, bool))[i] = True
    singles = sorted(masks, key=lambda f: -int((masks[f] & failed).sum()))[:MAX_FEATURES]
    candidates: dict[bytes, list[tuple[Feature, ...]]] = {}  # device set → the conjunctions that select it

    def add(conj: tuple[Feature, ...], mask: np.ndarray) -> None:
        if 0 < mask.sum() < n and (mask & failed).any():  # a feature of all or of no failures explains nothing
            candidates.setdefault(mask.tobytes(), []).append(conj)

    for f in singles:
        add((f,), masks[f])
    if pairs:
        for a, b in itertools.combinations(singles, 2):
            if a[0] != b[0]:
                add((a, b), masks[a] & masks[b])
    if not candidates:
        return Analysis(n_failed, n - n_failed, 0)
    rows = []
    for key, conjs in candidates.items():
        mask = np.frombuffer(key, bool)
        fw, sw = int((mask & failed).sum()), int((mask & ~failed).sum())  # with the features: failed, succeeded
        fo, so = n_failed - fw, (n - n_failed) - sw  # without them
        odds, p = fisher_exact([[fw, sw], [fo, so]], alternative="greater")
        rows.append((conjs, fw, fw + sw, fo, fo + so, float(odds), float(p)))
    adjusted = false_discovery_control([r[6] for r in rows], method="bh")
    findings: list[Finding] = []
    for (conjs, fw, nw, fo, nwo, odds, p), q in zip(rows, adjusted, strict=True):
        if q >= SIGNIFICANCE:
            continue
        # Name a set by its simplest descriptions: single features before pairs.
        simplest = min(len(x) for x in conjs)
        named = tuple(sorted((tuple(sorted(x, key=_order)) for x in conjs if len(x) == simplest),
                             key=lambda x: [_order(feat) for feat in x]))
        findings.append(Finding(named, fw, nw, fo, nwo, odds, p, float(q), _others(named[0], masks, failed)))
    # Most significant first; among equals, the one covering more failures, then the simpler.
    findings.sort(key=lambda f: (f.p_value, -f.failed_with, len(f.features[0]), f.name))
    kept: list[Finding] = []
    for finding in findings:
        # "hw=jetson-orin and site=a" only restates a stronger "hw=jetson-orin": leave it out.
        if any(k.feature_set & finding.feature_set and k.failed_with >= finding.failed_with for k in kept):
            continue
        kept.append(finding)
    return Analysis(n_failed, n - n_failed, len(rows), kept[:MAX_FINDINGS])


def _others(conj: tuple[Feature, ...], masks: dict[Feature, np.ndarray], failed: np.ndarray) -> tuple[tuple[str, int, int], ...]:
    """For a single feature: how the other values of its key fared ("0 of 40 on hw=cpu")."""
    if len(conj) != 1:
        return ()
    key, value = conj[0]
    out = [(_show(f), int((m & failed).sum()), int(m.sum())) for f, m in masks.items() if f[0] == key and f[1] != value]
    return tuple(sorted(out, key=lambda x: (-x[2], x[0])))[:5]


def facts_of(device_id: str, failed: bool, labels: Mapping[str, Any] | None, reported: Mapping[str, Any] | None,
             model: str | None) -> DeviceFacts:
    """A device's features from its labels and its (schema 2) reported state: every label (`hw` is the hardware
    class), the execution provider of `model`, the agent and onnxruntime versions, and the reported hardware."""
    features: dict[str, str] = {str(k): str(v) for k, v in (labels or {}).items()}
    rep = reported or {}
    m = ((rep.get("models") or {}).get(model) or {}) if model else {}
    if m.get("provider"):
        features["provider"] = str(m["provider"])
    for key in ("agent_version", "onnxruntime_version"):
        if rep.get(key):
            features[key] = str(rep[key])
    for k, v in (rep.get("hardware") or {}).items():
        if isinstance(v, (str, int, bool)) and f"hardware.{k}" not in features:
            features[f"hardware.{k}"] = str(v)
    return DeviceFacts(device_id, failed, features)
