"""Post-processing plug-ins: one class per kind of model output, chosen by a pydantic config's `type`.

The type comes from the bundle: its manifest's `extra.decoder` when it names one (BlazeFace and other SSDs
share task `detection` but not their decoding), else its `task`. The plug-in's settings are read from the
manifest's `extra`, and a camera's `postprocess` may override them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError


class UnsupportedModel(ValueError):
    """The model's task (or decoder) has no post-processing plug-in, or its settings do not fit the plug-in."""


class PostprocessConfig(BaseModel):
    # Manifests carry descriptive keys (box_format, keypoints …) beside the settings: ignore them there; the
    # camera's own overrides are checked against the plug-in's fields separately.
    model_config = ConfigDict(extra="ignore", frozen=True)

    type: str


class PostProcessor:
    """Raw outputs → K×6 float32 array: x1, y1, x2, y2 (normalised to the model input), score, class index."""

    config_type: ClassVar[type[PostprocessConfig]]
    registry: ClassVar[dict[str, type["PostProcessor"]]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.config_type.model_fields["type"].default
        PostProcessor.registry[kind] = cls

    def __init__(self, config: PostprocessConfig, labels: list[str]) -> None:
        self.config = config
        self.labels = labels

    def __call__(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


def plugin_type(task: str, extra: dict[str, Any]) -> str:
    return str(extra.get("decoder") or task)


def build(task: str, extra: dict[str, Any], labels: list[str], overrides: dict[str, Any] | None = None) -> PostProcessor:
    kind = plugin_type(task, extra)
    cls = PostProcessor.registry.get(kind)
    if cls is None:
        raise UnsupportedModel(
            f"no post-processing plug-in for task {task!r}" + (f" (decoder {extra['decoder']!r})" if extra.get("decoder") else "")
            + f"; the camera pipeline supports: {', '.join(sorted(PostProcessor.registry))}")
    unknown = set(overrides or {}) - set(cls.config_type.model_fields)
    if unknown:
        raise UnsupportedModel(f"{kind}: unknown post-processing setting(s) {sorted(unknown)}")
    try:
        config = cls.config_type.model_validate({**extra, **(overrides or {}), "type": kind})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UnsupportedModel(f"{kind}: bad setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    return cls(config, labels)


def iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return inter / np.maximum(union, 1e-9)


def nms(dets: np.ndarray, iou: float, weighted: bool = False) -> np.ndarray:
    """Greedy NMS on K×6 rows, best score first. `weighted` averages each cluster's boxes by score, as
    MediaPipe does for BlazeFace: steadier boxes from frame to frame than keeping the single best anchor."""
    if len(dets) == 0:
        return dets.reshape(0, 6)
    dets = dets[np.argsort(-dets[:, 4])]
    kept = []
    alive = np.ones(len(dets), bool)
    for i in range(len(dets)):
        if not alive[i]:
            continue
        overlap = iou_one(dets[i], dets) >= iou
        cluster = overlap & alive
        alive &= ~overlap
        row = dets[i].copy()
        if weighted and cluster.sum() > 1:
            w = dets[cluster, 4:5]
            row[:4] = (dets[cluster, :4] * w).sum(0) / w.sum()
        kept.append(row)
    return np.stack(kept).astype(np.float32)
