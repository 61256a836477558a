"""BlazeFace short-range face detector: MediaPipe's pretrained TFLite model, converted to ONNX.

The .tflite comes out of the `mediapipe==0.10.14` wheel (later releases ship no models); it is converted
with `tflite2onnx==0.4.1`, installed into a private folder under the cache, because it wants the `tflite`
flatbuffer package, which the project itself never needs.

Input `image`: batch×3×128×128 float32 in [-1, 1], RGB, NCHW. Outputs `regressors` batch×896×16 (box centre
offset, size and 6 keypoints, in input pixels, relative to the anchor) and `scores` batch×896×1 (logits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np

from .base import ZooModel
from .fetch import extract_from_wheel, private_packages, run_with

WHEEL = "mediapipe==0.10.14"
TFLITE = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
CONVERTER = ["tflite2onnx==0.4.1", "tflite==2.18.0", "flatbuffers==25.12.19"]
SIZE = 128

# The decoder settings of MediaPipe's face_detection_short_range graph (SsdAnchorsCalculator and
# TensorsToDetectionsCalculator options); the camera plug-in reads them from the manifest's `extra`.
EXTRA = {
    "decoder": "blazeface",
    "anchors": {
        "input_size": SIZE,
        "strides": [8, 16, 16, 16],
        "anchors_per_layer": [2, 2, 2, 2],  # aspect ratio 1 plus the interpolated scale → 2 per layer
        "offset": 0.5,
        "fixed_anchor_size": True,
        "num_anchors": 896,
    },
    "box_format": "cx,cy,w,h + 6 keypoints (x,y), pixels of the 128×128 input, relative to the anchor centre",
    "keypoints": ["right_eye", "left_eye", "nose_tip", "mouth", "right_ear_tragion", "left_ear_tragion"],
    "score_activation": "sigmoid",
    "score_clipping": 100.0,
    "score_threshold": 0.5,
    "nms_iou": 0.3,
}

PREPROCESSING = {"size": [SIZE, SIZE], "layout": "NCHW", "color": "RGB", "scale": 1 / 127.5,
                 "mean": [1.0, 1.0, 1.0], "std": [1.0, 1.0, 1.0]}

_CONVERT = """
import sys, tflite2onnx
tflite2onnx.convert(sys.argv[1], sys.argv[2])
"""


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 RGB (any size) → 1×3×128×128 float32 in [-1, 1], squashed to the square."""
    import cv2

    img = cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    return (img * (1 / 127.5) - 1.0).transpose(2, 0, 1)[None]


def _tidy(src: Path, dest: Path) -> None:
    """Stable names, a symbolic batch axis, and an opset onnxruntime's quantizer handles well."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    rename = {graph.input[0].name: "image", "classificators": "scores", "regressors": "regressors"}
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    for v in list(graph.input) + list(graph.output):
        v.name = rename.get(v.name, v.name)
        v.type.tensor_type.shape.dim[0].ClearField("dim_value")
        v.type.tensor_type.shape.dim[0].dim_param = "batch"
    # The converter bakes batch 1 into its Reshapes; 0 copies the batch dimension from the input instead.
    reshape_shapes = {n.input[1] for n in graph.node if n.op_type == "Reshape"}
    for i, init in enumerate(graph.initializer):
        if init.name in reshape_shapes:
            arr = numpy_helper.to_array(init).copy()
            arr[0] = 0
            graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
    del graph.value_info[:]
    model.producer_name = "edgefleet (tflite2onnx 0.4.1, mediapipe 0.10.14 face_detection_short_range)"
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(dest))


def _face_box_on_astronaut() -> tuple[np.ndarray, list[float]]:
    """Eileen Collins' face in skimage's astronaut photo, cropped square; box hand-labelled (crop pixels)."""
    from skimage import data

    img = data.astronaut()
    crop = img[0:320, 80:400]
    return crop, [100 / 320, 75 / 320, 195 / 320, 178 / 320]  # hairline to chin, cheek to cheek


def evaluation_set(seed: int = 0) -> dict[str, np.ndarray]:
    """Labelled faces and non-faces from `skimage.data`, as model inputs with boxes in [0, 1].

    Faces: the astronaut photo, and LFW face crops pasted at random size and place on textured scenes.
    Non-faces: LFW's non-face patches pasted the same way, and whole photos with no human face (a cat, coffee,
    a rocket, coins …), which are where a face detector's false positives come from.
    """
    import cv2
    from skimage import data

    rng = np.random.default_rng(seed)
    lfw = data.lfw_subset()  # 100 faces then 100 non-faces, 25×25 grey in [0, 1]
    backgrounds = [data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry(),
                   np.stack([data.coins()] * 3, -1), np.stack([data.camera()] * 3, -1), np.stack([data.brick()] * 3, -1),
                   np.stack([data.grass()] * 3, -1), np.stack([data.moon()] * 3, -1), data.hubble_deep_field()]
    images, boxes = [], []

    def scene() -> np.ndarray:
        bg = backgrounds[rng.integers(len(backgrounds))]
        h, w = bg.shape[:2]
        s = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        return cv2.resize(np.ascontiguousarray(bg[y:y + s, x:x + s]), (SIZE, SIZE), interpolation=cv2.INTER_AREA)

    def paste(patch: np.ndarray) -> tuple[np.ndarray, list[float]]:
        canvas = scene()
        s = int(rng.integers(40, 81))
        x, y = int(rng.integers(0, SIZE - s + 1)), int(rng.integers(0, SIZE - s + 1))
        grey = cv2.resize((patch * 255).astype(np.uint8), (s, s), interpolation=cv2.INTER_CUBIC)
        canvas[y:y + s, x:x + s] = grey[..., None]
        return canvas, [x / SIZE, y / SIZE, (x + s) / SIZE, (y + s) / SIZE]

    crop, box = _face_box_on_astronaut()
    images.append(cv2.resize(crop, (SIZE, SIZE), interpolation=cv2.INTER_AREA))
    boxes.append([box])
    for i in range(100):
        img, box = paste(lfw[i])
        images.append(img)
        boxes.append([box])
    for i in range(100, 200):
        img, _ = paste(lfw[i])
        images.append(img)
        boxes.append([])
    for photo in (data.chelsea(), data.coffee(), data.rocket(), data.immunohistochemistry(), data.hubble_deep_field(),
                  np.stack([data.coins()] * 3, -1), np.stack([data.moon()] * 3, -1), np.stack([data.page()] * 3, -1)):
        images.append(cv2.resize(photo, (SIZE, SIZE), interpolation=cv2.INTER_AREA))
        boxes.append([])
    x = np.stack([(im.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1) for im in images])
    k = max(len(b) for b in boxes)
    padded = np.full((len(boxes), k, 4), np.nan, np.float32)  # NaN rows: no box
    for i, b in enumerate(boxes):
        if b:
            padded[i, :len(b)] = b
    return {"x": x.astype(np.float32), "boxes": padded}


def build(dest: Path, *, name: str = "blazeface") -> ZooModel:
    tflite = dest / "face_detection_short_range.tflite"
    if not tflite.exists():
        extract_from_wheel(WHEEL, {TFLITE: tflite})
    tools = private_packages(dest.parent.parent / "tools" / "tflite2onnx-0.4.1", CONVERTER)
    raw = dest / "converted.onnx"
    run_with(tools, _CONVERT, str(tflite), str(raw))
    onnx_path = dest / "model.onnx"
    _tidy(raw, onnx_path)
    raw.unlink()
    sample = evaluation_set()
    np.savez(dest / "golden.npz", image=sample["x"][:2])
    np.savez(dest / "eval.npz", **cast(dict[str, Any], sample))  # numpy's stubs match ** against allow_pickle too
    return ZooModel(
        name=name,
        onnx=onnx_path,
        golden_inputs=dest / "golden.npz",
        task="detection",
        preprocessing=PREPROCESSING,
        labels=["face"],
        extra=EXTRA,
        data={"eval": dest / "eval.npz"},
    )
