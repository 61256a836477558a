"""Task `detection`: boxes. The one decoder so far is BlazeFace's (MediaPipe face detection): SSD anchors, box
regression relative to each anchor, sigmoid scores, weighted NMS. Settings and anchor layout come from the
bundle's `extra` (the zoo's BlazeFace bundle carries MediaPipe's own); without them, MediaPipe's short-range
defaults apply, so a bundle made with plain `model-tools bundle --task detection` works too."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fleet_protocol.manifest import TensorSpec

from .base import BoxDecoder, PostprocessConfig, UnsupportedModel, nms


class Anchors(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    input_size: int = 128
    strides: list[int] = [8, 16, 16, 16]
    anchors_per_layer: list[int] = [2, 2, 2, 2]
    offset: float = 0.5
    num_anchors: int | None = None


class DetectionConfig(PostprocessConfig):
    type: Literal["detection"] = "detection"
    decoder: Literal["blazeface"] = "blazeface"
    anchors: Anchors = Field(default_factory=Anchors)
    score_threshold: float = Field(default=0.5, ge=0, le=1)
    score_clipping: float = 100.0
    nms_iou: float = Field(default=0.3, gt=0, le=1)
    weighted_nms: bool = True
    max_detections: int = Field(default=50, ge=1)
    regressors_output: str = "regressors"
    scores_output: str = "scores"


def anchor_centres(a: Anchors) -> np.ndarray:
    """(x, y) centres in [0, 1] in MediaPipe's SsdAnchorsCalculator order: consecutive layers with one stride
    share a grid and emit their anchors cell by cell together."""
    centres, i = [], 0
    while i < len(a.strides):
        stride, per_cell = a.strides[i], 0
        while i < len(a.strides) and a.strides[i] == stride:
            per_cell += a.anchors_per_layer[i]
            i += 1
        cells = int(np.ceil(a.input_size / stride))
        ys, xs = np.meshgrid((np.arange(cells) + a.offset) / cells, (np.arange(cells) + a.offset) / cells, indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], 1)
        centres.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


class BoxDetection(BoxDecoder):
    config_type = DetectionConfig
    config: DetectionConfig

    @classmethod
    def check_outputs(cls, outputs: Sequence[TensorSpec]) -> None:
        if len(outputs) < 2 or not any(o.shape and o.shape[-1] == 1 for o in outputs):
            raise UnsupportedModel("detection (blazeface): needs a box-regression and a score output, the model has "
                                   + ", ".join(f"{o.name} {o.shape}" for o in outputs))

    def __init__(self, config: DetectionConfig, labels: list[str]) -> None:
        super().__init__(config, labels or ["face"])
        self.anchors = anchor_centres(config.anchors)
        if config.anchors.num_anchors is not None and len(self.anchors) != config.anchors.num_anchors:
            raise ValueError(f"anchor layout gives {len(self.anchors)} anchors, the bundle says {config.anchors.num_anchors}")
        # Threshold on logits: no sigmoid over the 896 anchors of every frame, only over the survivors.
        p = min(max(config.score_threshold, 1e-6), 1 - 1e-6)
        self.logit_threshold = float(np.log(p / (1 - p)))

    def _outputs(self, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        reg, sc = outputs.get(self.config.regressors_output), outputs.get(self.config.scores_output)
        if reg is None or sc is None:  # a re-exported model may name them otherwise: tell them apart by shape
            for v in outputs.values():
                if v.shape[-1] == 1:
                    sc = v
                elif v.shape[-1] >= 4:
                    reg = v
        if reg is None or sc is None:
            raise ValueError(f"BlazeFace needs a box and a score output, got {list(outputs)}")
        return reg[0], sc[0].reshape(-1)

    def __call__(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        reg, logits = self._outputs(outputs)
        keep = np.flatnonzero(logits >= self.logit_threshold)
        if keep.size == 0:
            return np.zeros((0, 6), np.float32)
        c = self.config
        r, a = reg[keep], self.anchors[keep]
        score = 1.0 / (1.0 + np.exp(-np.clip(logits[keep], -c.score_clipping, c.score_clipping)))
        size = float(c.anchors.input_size)
        cx, cy = r[:, 0] / size + a[:, 0], r[:, 1] / size + a[:, 1]
        w, h = r[:, 2] / size, r[:, 3] / size
        dets = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, score, np.zeros_like(score)], 1)
        return nms(dets, c.nms_iou, weighted=c.weighted_nms)[: c.max_detections]
