"""Drawing results onto frames for people to look at, and JPEG-encoding them."""

from __future__ import annotations

import cv2
import numpy as np

from .pipeline import Result

COLOURS = [(0, 220, 0), (0, 160, 255), (255, 120, 0), (200, 0, 200), (0, 220, 220)]


def draw(result: Result, caption: str | None = None) -> np.ndarray:
    img = result.frame.full().copy()
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    thick = max(1, round(img.shape[1] / 320))
    labels: dict[str, int] = {}
    for d in result.detections:
        colour = COLOURS[labels.setdefault(d.label, len(labels)) % len(COLOURS)]
        x1, y1, x2, y2 = (int(round(v)) for v in d.box)
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, thick)
        text = d.text if d.text else f"{d.label} {d.score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        ty = y1 - 4 if y1 - th - 6 >= 0 else y2 + th + 4
        cv2.rectangle(img, (x1, ty - th - 3), (x1 + tw + 4, ty + base - 1), colour, -1)
        cv2.putText(img, text, (x1 + 2, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    if caption:
        cv2.putText(img, caption, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, caption, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def jpeg(img: np.ndarray, quality: int = 80) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
