"""PP-OCRv4 text detection and recognition, and the PP-OCR v2 direction classifier, as shipped in RapidOCR.

The three .onnx files come out of the `rapidocr-onnxruntime==1.4.4` wheel, which is only downloaded, never
installed (it would pull a second OpenCV into the environment). The recognizer's character dictionary is in
its ONNX metadata (`character`); with CTC blank first and space last it gives the 6,625 classes of its output.

- ppocr-rec: `x` batch×3×48×W (W ≤ 320 here) float32, (x/255 - 0.5)/0.5, BGR; → batch×T×6625 softmax (CTC).
- ppocr-det: `x` batch×3×H×W (multiples of 32) float32, ImageNet mean/std, BGR; → batch×1×H×W text probability.
- ppocr-cls: `x` batch×3×48×192 float32, (x/255 - 0.5)/0.5, BGR; → batch×2 (0°, 180°).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import ZooModel
from .fetch import extract_from_wheel

WHEEL = "rapidocr-onnxruntime==1.4.4"
FILES = {
    "ppocr-det": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "ppocr-rec": "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
    "ppocr-cls": "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
}
REC_HEIGHT, REC_WIDTH = 48, 320
CLS_SHAPE = (48, 192)
DET_SIZE = 320  # small enough that evaluating det stays a matter of seconds on two cores
# No glyphs that even a person cannot tell apart in Hershey fonts (0/O, 1/I/l, lower/upper c, o, s, v, w, x, z).
ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabdefghijkmnqrt"


def characters(onnx_path: Path) -> list[str]:
    """The recognizer's classes: CTC blank, the dictionary from the model's metadata, then space."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    return ["<blank>"] + meta["character"].splitlines() + [" "]


def ctc_decode(probs: np.ndarray, labels: list[str]) -> list[str]:
    """Greedy CTC: best class per step, merge repeats, drop blanks (class 0)."""
    best = probs.argmax(-1)
    texts = []
    for seq in best:
        keep = np.ones(len(seq), bool)
        keep[1:] = seq[1:] != seq[:-1]
        texts.append("".join(labels[i] for i in seq[keep & (seq != 0)]).strip())
    return texts


def render_text(text: str, rng: np.random.Generator, height: int = REC_HEIGHT, width: int = REC_WIDTH) -> np.ndarray:
    """One text line drawn with OpenCV's Hershey fonts on a noisy light background → H×W×3 uint8 BGR."""
    import cv2

    font = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX][
        int(rng.integers(4))]
    thickness = int(rng.integers(1, 3))
    (tw, th), base = cv2.getTextSize(text, font, 1.0, thickness)
    # Draw large, then fit into the model's height the way PP-OCR's own preprocessing does.
    canvas_h, canvas_w = th + base + 16, tw + 16
    bg = int(rng.integers(190, 256))
    img = np.full((canvas_h, canvas_w, 3), bg, np.uint8)
    ink = tuple(int(v) for v in rng.integers(0, 80, 3))
    cv2.putText(img, text, (8, 8 + th), font, 1.0, ink, thickness, cv2.LINE_AA)
    noise = rng.normal(0, 6, img.shape)
    img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return resize_for_rec(img, height, width)


def resize_for_rec(img: np.ndarray, height: int = REC_HEIGHT, width: int = REC_WIDTH) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    new_w = min(width, max(1, int(np.ceil(height * w / h))))
    out = np.zeros((height, width, 3), np.uint8)  # PP-OCR pads the right with zeros (after normalisation: -1)
    out[:, :new_w] = cv2.resize(img, (new_w, height))
    return out


def to_input(images: np.ndarray) -> np.ndarray:
    """N×H×W×3 uint8 → N×3×H×W float32 in [-1, 1]; zero padding becomes -1 as in PP-OCR."""
    return (images.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2).copy()


def text_set(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    texts, images = [], []
    for _ in range(n):
        length = int(rng.integers(4, 13))
        text = "".join(ALPHABET[i] for i in rng.integers(0, len(ALPHABET), length))
        texts.append(text)
        images.append(render_text(text, rng))
    return np.stack(images), texts


def page_set(n: int, seed: int, size: int = DET_SIZE) -> np.ndarray:
    """Pages of a few rendered lines for the detector → N×3×size×size float32 (ImageNet-normalised BGR)."""
    import cv2

    rng = np.random.default_rng(seed)
    pages = []
    for _ in range(n):
        img = np.full((size, size, 3), int(rng.integers(200, 256)), np.uint8)
        for line in range(int(rng.integers(2, 6))):
            text = "".join(ALPHABET[i] for i in rng.integers(0, len(ALPHABET), int(rng.integers(3, 10))))
            y = 40 + line * 55 + int(rng.integers(0, 10))
            cv2.putText(img, text, (int(rng.integers(5, 60)), y), cv2.FONT_HERSHEY_SIMPLEX,
                        float(rng.uniform(0.7, 1.3)), (20, 20, 20), 2, cv2.LINE_AA)
        pages.append(img)
    x: np.ndarray = np.stack(pages).astype(np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return x.transpose(0, 3, 1, 2).astype(np.float32).copy()


def build(dest: Path, *, name: str) -> ZooModel:
    onnx_path = dest / "model.onnx"
    extract_from_wheel(WHEEL, {FILES[name]: onnx_path})
    data: dict[str, Path] = {}
    if name == "ppocr-rec":
        labels = characters(onnx_path)
        images, texts = text_set(200, seed=0)
        np.savez(dest / "eval.npz", x=to_input(images), text=np.array(texts))
        calib, _ = text_set(64, seed=1)  # other seed: never calibrate on the data we score
        np.savez(dest / "calibration.npz", x=to_input(calib))
        data = {"eval": dest / "eval.npz", "calibration": dest / "calibration.npz"}
        golden = to_input(images[:2])
        task = "ocr-recognition"
        pre = {"size": [REC_WIDTH, REC_HEIGHT], "layout": "NCHW", "color": "BGR", "scale": 1 / 255,
               "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
        extra = {"decoder": "ctc-greedy", "blank_index": 0, "keep_aspect": True, "pad": "right"}
    elif name == "ppocr-cls":
        labels = ["0", "180"]
        rng = np.random.default_rng(0)
        imgs = [resize_for_rec(render_text("".join(ALPHABET[i] for i in rng.integers(0, len(ALPHABET), 8)), rng), *CLS_SHAPE)
                for _ in range(64)]
        flipped = [im[::-1, ::-1] for im in imgs]
        x = to_input(np.stack(imgs + flipped))
        y = np.array([0] * len(imgs) + [1] * len(flipped))
        np.savez(dest / "eval.npz", x=x, y=y)
        data = {"eval": dest / "eval.npz"}
        golden = x[:2]
        task = "ocr-orientation"
        pre = {"size": [CLS_SHAPE[1], CLS_SHAPE[0]], "layout": "NCHW", "color": "BGR", "scale": 1 / 255,
               "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
        extra = {"threshold": 0.9}
    else:
        labels = ["text"]
        x = page_set(16, seed=0)
        np.savez(dest / "eval.npz", x=x)
        data = {"eval": dest / "eval.npz"}
        golden = x[:1]
        task = "ocr-detection"
        pre = {"size": [DET_SIZE, DET_SIZE], "layout": "NCHW", "color": "BGR", "scale": 1 / 255,
               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
        extra = {"threshold": 0.3, "box_threshold": 0.5, "unclip_ratio": 1.6, "size_multiple": 32}
    np.savez(dest / "golden.npz", x=golden)
    return ZooModel(name=name, onnx=onnx_path, golden_inputs=dest / "golden.npz", task=task,
                    preprocessing=pre, labels=labels, extra=extra, data=data)
