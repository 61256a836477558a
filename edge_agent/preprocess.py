"""Frame → model input, as the bundle's manifest describes it (size, layout, colour, x*scale then (x-mean)/std).

The geometry of the resize is kept, so post-processing can map boxes from model-input space back to pixels
of the source frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from fleet_protocol.manifest import Preprocessing


@dataclass(frozen=True)
class Geometry:
    """How a frame was placed in the model input: input = frame * scale + offset (per axis), in [0, 1] units."""

    frame_w: int
    frame_h: int
    sx: float = 1.0
    sy: float = 1.0
    ox: float = 0.0
    oy: float = 0.0

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """K×4 boxes (x1, y1, x2, y2) normalised to the model input → pixels of the frame, clipped to it."""
        out = np.empty_like(boxes[:, :4], dtype=np.float32)
        out[:, [0, 2]] = (boxes[:, [0, 2]] - self.ox) / self.sx * self.frame_w
        out[:, [1, 3]] = (boxes[:, [1, 3]] - self.oy) / self.sy * self.frame_h
        np.clip(out[:, [0, 2]], 0, self.frame_w, out=out[:, [0, 2]])
        np.clip(out[:, [1, 3]], 0, self.frame_h, out=out[:, [1, 3]])
        return out


# libjpeg decodes straight to 1/2, 1/4 or 1/8 of the size, for a fraction of the work of a full decode.
REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def jpeg_size(blob: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header without decoding it; None for anything else."""
    if blob[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 9 <= len(blob):
        if blob[pos] != 0xFF:
            return None
        marker = blob[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(blob[pos + 2:pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame segment
            return int.from_bytes(blob[pos + 7:pos + 9], "big"), int.from_bytes(blob[pos + 5:pos + 7], "big")
        pos += 2 + length
    return None


def shrink(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Resize for the model, fast and without aliasing: halve with OpenCV's 2×2 area path (a true box filter,
    and its fastest resize) while the result still has at least the target's resolution, then one bilinear step.
    640×480 → 128×128: ~0.16 ms, against ~0.45 ms for a bilinear step to 3× the target and an area step, and
    ~1 ms for INTER_AREA straight; BlazeFace finds the same boxes (mean IoU with the truth 0.706 vs 0.705)."""
    ih, iw = img.shape[:2]
    while (iw > 2 * w or ih > 2 * h) and iw // 2 >= w and ih // 2 >= h:
        img = cv2.resize(img, (iw // 2, ih // 2), interpolation=cv2.INTER_AREA)
        ih, iw = img.shape[:2]
    if iw > 4 * w or ih > 4 * h:  # a very different aspect ratio: bilinear would skip whole rows or columns
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)


class Preprocessor:
    def __init__(self, spec: Preprocessing | None, input_shape: tuple | None = None,
                 resize: Literal["stretch", "letterbox"] = "stretch") -> None:
        spec = spec or Preprocessing()
        self.spec = spec
        self.resize = resize
        size = spec.size
        if size is None and input_shape is not None and len(input_shape) == 4:
            h, w = (input_shape[2], input_shape[3]) if spec.layout == "NCHW" else (input_shape[1], input_shape[2])
            if isinstance(h, int) and isinstance(w, int):
                size = (w, h)
        if size is None:
            raise ValueError("the model's preprocessing names no input size and its input shape has none either")
        self.size = (int(size[0]), int(size[1]))
        channels = 1 if spec.color == "GRAY" else 3
        mean = np.asarray(spec.mean or [0.0], np.float32)
        std = np.asarray(spec.std or [1.0], np.float32)
        if mean.size not in (1, channels) or std.size not in (1, channels):
            raise ValueError(f"mean/std need 1 or {channels} values, got {mean.size}/{std.size}")
        # x*scale then (x-mean)/std, folded into one multiply-add per pixel.
        self._mul = (spec.scale / std).astype(np.float32)
        self._add = (-mean / std).astype(np.float32)
        self._blob = None
        if spec.layout == "NCHW" and channels == 3 and hasattr(cv2.dnn, "Image2BlobParams"):
            # OpenCV's blob maker does colour swap, (x - m) * s and HWC→CHW in one pass: ~6× less than numpy.
            m = np.broadcast_to(mean / spec.scale, 3) if spec.scale else np.zeros(3)
            self._blob = cv2.dnn.Image2BlobParams(
                scalefactor=tuple(float(v) for v in np.broadcast_to(self._mul, 3)), size=self.size,
                mean=tuple(float(v) for v in m), swapRB=spec.color == "RGB", ddepth=cv2.CV_32F)

    def decode_scale(self, frame_size: tuple[int, int]) -> int:
        """The largest JPEG decode reduction (1, 2, 4, 8) that still leaves the model's input resolution."""
        w, h = self.size
        fw, fh = frame_size
        return next((s for s in (8, 4, 2) if -(-fw // s) >= w and -(-fh // s) >= h), 1)

    def __call__(self, frame: np.ndarray, frame_size: tuple[int, int] | None = None) -> tuple[np.ndarray, Geometry]:
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        elif frame.shape[2] == 4:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
        fh, fw = frame.shape[:2]
        sw, sh = frame_size or (fw, fh)  # geometry is normalised: only the pixel size of the source matters
        w, h = self.size
        if self.resize == "letterbox":
            s = min(w / fw, h / fh)
            nw, nh = max(1, round(fw * s)), max(1, round(fh * s))
            canvas: np.ndarray = np.zeros((h, w, 3), np.uint8)
            x0, y0 = (w - nw) // 2, (h - nh) // 2
            canvas[y0:y0 + nh, x0:x0 + nw] = shrink(frame, nw, nh)
            img, geo = canvas, Geometry(sw, sh, nw / w, nh / h, x0 / w, y0 / h)
        else:
            # Resize first: colour conversion and normalisation then touch the small image only.
            img, geo = shrink(frame, w, h), Geometry(sw, sh)
        if self._blob is not None:
            return cv2.dnn.blobFromImageWithParams(img, self._blob), geo
        if self.spec.color == "RGB":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        elif self.spec.color == "GRAY":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[..., None]
        x = img.astype(np.float32)
        x *= self._mul
        x += self._add
        x = x.transpose(2, 0, 1)[None] if self.spec.layout == "NCHW" else x[None]
        return np.ascontiguousarray(x), geo
