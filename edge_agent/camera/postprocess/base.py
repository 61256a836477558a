"""Post-processing plug-ins: one small class per task, chosen by the manifest's `task` (a pydantic config's
`type`), with its settings read from the manifest's `extra` and a camera's `postprocess` overrides.

Two roles. A *box* plug-in decodes a detector's outputs into boxes (it can be a camera's `detector`); a *crop*
plug-in reads each box's crop (it can be one of a camera's `stages`: orientation, recognition). A bundle whose
`extra.decoder` names a decoder the task's plug-in does not have is refused, never decoded the wrong way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from fleet_protocol.manifest import Manifest, Preprocessing, TensorSpec
from fleet_protocol.messages import Detection

from ...boxes import iou as box_iou

Role = Literal["boxes", "crops"]


class UnsupportedModel(ValueError):
    """The model's task has no post-processing plug-in, or its settings or outputs do not fit the plug-in."""


class PostprocessConfig(BaseModel):
    # Manifests carry descriptive keys (box_format, keypoints …) beside the settings: ignore them there; the
    # camera's own overrides are checked against the plug-in's fields separately.
    model_config = ConfigDict(extra="ignore", frozen=True)

    type: str  # the task


class PostProcessor:
    config_type: ClassVar[type[PostprocessConfig]]
    role: ClassVar[Role]
    registry: ClassVar[dict[str, type[PostProcessor]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_type" in cls.__dict__:
            PostProcessor.registry[cls.config_type.model_fields["type"].default] = cls

    def __init__(self, config: PostprocessConfig, labels: list[str]) -> None:
        self.config = config
        self.labels = labels

    @classmethod
    def check_outputs(cls, outputs: Sequence[TensorSpec]) -> None:
        """Raise UnsupportedModel when the model's outputs are not what this plug-in decodes."""


class BoxDecoder(PostProcessor):
    """Raw outputs → K×6 float32: x1, y1, x2, y2 (normalised to the model input), score, class index."""

    role = "boxes"

    def __call__(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


def tasks(role: Role | None = None) -> list[str]:
    return sorted(t for t, cls in PostProcessor.registry.items() if role is None or cls.role == role)


def plugin_class(manifest: Manifest) -> type[PostProcessor]:
    cls = PostProcessor.registry.get(manifest.task)
    if cls is None:
        raise UnsupportedModel(f"no post-processing plug-in for task {manifest.task!r}; the camera pipeline "
                               f"supports: {', '.join(tasks())}")
    return cls


def build(manifest: Manifest, overrides: dict[str, Any] | None = None) -> PostProcessor:
    """The plug-in for `manifest`, configured from its `extra` plus `overrides`; UnsupportedModel if none fits."""
    cls = plugin_class(manifest)
    kind = manifest.task
    fields = set(cls.config_type.model_fields) - {"type"}
    unknown = set(overrides or {}) - fields
    if unknown:
        raise UnsupportedModel(f"{kind}: unknown post-processing setting(s) {sorted(unknown)}")
    try:
        config = cls.config_type.model_validate({**manifest.extra, **(overrides or {}), "type": kind})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UnsupportedModel(f"{kind}: bad setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    cls.check_outputs(manifest.outputs)
    try:
        return cls(config, list(manifest.labels))
    except ValueError as exc:
        raise UnsupportedModel(f"{kind}: {exc}") from None


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
        overlap = box_iou(dets[i:i + 1], dets)[0] >= iou
        cluster = overlap & alive
        alive &= ~overlap
        row = dets[i].copy()
        if weighted and cluster.sum() > 1:
            w = dets[cluster, 4:5]
            row[:4] = (dets[cluster, :4] * w).sum(0) / w.sum()
        kept.append(row)
    return np.stack(kept).astype(np.float32)


class CropReader(PostProcessor):
    """A later stage: reads the crop of every box the detector found, all crops of a frame in one batch.

    `apply` returns the crops for the next stage (turned upright, say) and the detections (with text, say).
    """

    role = "crops"

    def prepare(self, crops: list[np.ndarray], preprocessing: Preprocessing | None) -> np.ndarray:
        """Crops (H×W×3 uint8 BGR) → one N×C×H×W float32 batch, stretched to the manifest's size."""
        pre = preprocessing or Preprocessing()
        if pre.size is None:
            raise UnsupportedModel(f"{self.config.type}: the manifest's preprocessing names no input size")
        w, h = pre.size
        return normalise(np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in crops]), pre)

    def apply(self, outputs: list[np.ndarray], crops: list[np.ndarray],
              detections: list[Detection]) -> tuple[list[np.ndarray], list[Detection]]:
        raise NotImplementedError


def normalise(images: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """N×H×W×3 uint8 BGR → N×C×H×W (or N×H×W×C) float32: colour order, x*scale, then (x-mean)/std."""
    if pre.color == "RGB":
        images = images[..., ::-1]
    elif pre.color == "GRAY":
        images = np.stack([cv2.cvtColor(i, cv2.COLOR_BGR2GRAY) for i in images])[..., None]
    x = images.astype(np.float32) * np.float32(pre.scale)
    if pre.mean:
        x -= np.asarray(pre.mean, np.float32)
    if pre.std:
        x /= np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if pre.layout == "NCHW" else x)
