"""Task `ocr-detection`: text boxes with a DB (differentiable binarisation) head, as PP-OCR's detector: threshold the text
probability map, take each blob's outline, keep blobs whose mean probability is high enough, and grow the
box back by `unclip_ratio` (the network is trained on shrunk text regions)."""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from .base import BoxDecoder, PostprocessConfig


class OcrDetectionConfig(PostprocessConfig):
    type: Literal["ocr-detection"] = "ocr-detection"
    decoder: Literal["db"] = "db"
    threshold: float = Field(default=0.3, gt=0, lt=1)  # pixel: is text
    box_threshold: float = Field(default=0.5, gt=0, lt=1)  # blob: mean probability to keep it
    unclip_ratio: float = Field(default=1.6, gt=0)
    min_size: int = Field(default=3, ge=1)  # pixels of the probability map
    max_detections: int = Field(default=100, ge=1)


class OcrDetection(BoxDecoder):
    config_type = OcrDetectionConfig
    config: OcrDetectionConfig

    def __init__(self, config: OcrDetectionConfig, labels: list[str]) -> None:
        super().__init__(config, labels or ["text"])

    def __call__(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        raw = next(iter(outputs.values()))
        h, w = int(raw.shape[-2]), int(raw.shape[-1])
        prob: np.ndarray = raw.reshape(h, w).astype(np.float32)
        mask = (prob > self.config.threshold).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        rows = []
        for contour in contours:
            x, y, bw, bh = cv2.boundingRect(contour)
            if min(bw, bh) < self.config.min_size:
                continue
            blob = np.zeros((bh, bw), np.uint8)
            cv2.fillPoly(blob, [contour - [x, y]], 1)
            score = float(cv2.mean(prob[y:y + bh, x:x + bw], blob)[0])
            if score < self.config.box_threshold:
                continue
            # DB's unclip: offset the outline outwards by area * ratio / perimeter.
            area, perimeter = cv2.contourArea(contour), cv2.arcLength(contour, True)
            d = area * self.config.unclip_ratio / max(perimeter, 1e-6)
            rows.append([(x - d) / w, (y - d) / h, (x + bw + d) / w, (y + bh + d) / h, score, 0.0])
        if not rows:
            return np.zeros((0, 6), np.float32)
        dets = np.clip(np.asarray(rows, np.float32), [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0])
        return dets[np.argsort(-dets[:, 4])][: self.config.max_detections]
