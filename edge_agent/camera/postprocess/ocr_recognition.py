"""Task `ocr-recognition`: the text of each crop, by greedy CTC decoding (PP-OCR's recognizer).

The crop is scaled to the model's height keeping its aspect ratio and padded on the right, as PP-OCR trains
it; the batch is as wide as its widest crop needs (up to the manifest's width), so short words cost less.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from fleet_protocol.manifest import Preprocessing, TensorSpec
from fleet_protocol.messages import Detection

from .base import CropReader, PostprocessConfig, UnsupportedModel, normalise


class OcrRecognitionConfig(PostprocessConfig):
    type: Literal["ocr-recognition"] = "ocr-recognition"
    decoder: Literal["ctc-greedy"] = "ctc-greedy"
    blank_index: int = Field(default=0, ge=0)
    keep_aspect: bool = True
    pad: Literal["right"] = "right"
    min_confidence: float = Field(default=0.5, ge=0, le=1)  # mean probability of the characters read


class OcrRecognition(CropReader):
    config_type = OcrRecognitionConfig
    config: OcrRecognitionConfig

    def __init__(self, config: OcrRecognitionConfig, labels: list[str]) -> None:
        if not labels:
            raise ValueError("a CTC recognizer needs its characters as the manifest's labels")
        super().__init__(config, labels)
        self._labels = np.asarray(labels, dtype=object)

    @classmethod
    def check_outputs(cls, outputs: Sequence[TensorSpec]) -> None:
        if len(outputs) != 1 or len(outputs[0].shape) != 3:
            raise UnsupportedModel("ocr-recognition: needs one batch×steps×classes output, the model has "
                                   + ", ".join(f"{o.name} {o.shape}" for o in outputs))

    def prepare(self, crops: list[np.ndarray], preprocessing: Preprocessing | None) -> np.ndarray:
        pre = preprocessing or Preprocessing()
        if pre.size is None:
            raise UnsupportedModel("ocr-recognition: the manifest's preprocessing names no input size")
        max_w, h = pre.size
        if not self.config.keep_aspect:
            return super().prepare(crops, pre)
        widths = [min(max_w, max(1, int(np.ceil(h * c.shape[1] / max(c.shape[0], 1))))) for c in crops]
        width = min(max_w, -(-max(widths) // 8) * 8)
        batch = np.zeros((len(crops), h, width, 3), np.uint8)
        for i, (crop, w) in enumerate(zip(crops, widths, strict=True)):
            batch[i, :, :w] = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
        return normalise(batch, pre)

    def apply(self, outputs: list[np.ndarray], crops: list[np.ndarray],
              detections: list[Detection]) -> tuple[list[np.ndarray], list[Detection]]:
        probs = outputs[0]
        best, conf = probs.argmax(-1), probs.max(-1)
        read = []
        for d, seq, p in zip(detections, best, conf, strict=True):
            keep = np.ones(len(seq), bool)
            keep[1:] = seq[1:] != seq[:-1]
            keep &= seq != self.config.blank_index
            keep &= seq < len(self._labels)
            text = "".join(self._labels[seq[keep]]).strip()
            confidence = float(p[keep].mean()) if keep.any() else 0.0
            ok = text and confidence >= self.config.min_confidence
            read.append(d.model_copy(update={"text": text[:1024] if ok else None}))
        return crops, read
