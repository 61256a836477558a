"""Task `ocr-orientation`: turns a crop upright when the classifier is sure it is upside down (PP-OCR's
direction classifier, classes 0° and 180°), so the recognizer after it reads it the right way round."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from fleet_protocol.messages import Detection

from .base import CropReader, PostprocessConfig


class OcrOrientationConfig(PostprocessConfig):
    type: Literal["ocr-orientation"] = "ocr-orientation"
    threshold: float = Field(default=0.9, gt=0, le=1)  # probability of 180° above which the crop is turned


class OcrOrientation(CropReader):
    config_type = OcrOrientationConfig
    config: OcrOrientationConfig

    def __init__(self, config: OcrOrientationConfig, labels: list[str]) -> None:
        super().__init__(config, labels or ["0", "180"])
        self.flipped = self.labels.index("180") if "180" in self.labels else 1

    def apply(self, outputs: list[np.ndarray], crops: list[np.ndarray],
              detections: list[Detection]) -> tuple[list[np.ndarray], list[Detection]]:
        probs = outputs[0].reshape(len(crops), -1)
        turned = [np.ascontiguousarray(c[::-1, ::-1]) if p[self.flipped] > self.config.threshold else c
                  for c, p in zip(crops, probs, strict=True)]
        return turned, detections
