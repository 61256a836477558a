"""A camera's models, bound for one run of frames: the detector (boxes) and the later stages (crop readers).

Models come from the device's ModelHost by name, looked up again for every frame: a hot swap of a model is
picked up at the next frame, and a frame that started on the old model finishes on it (the host's
LoadedModel guarantees that). Anything LoadedModel-shaped works: `name`, `version`, `sha256`, `manifest`,
`session` (for input and output names) and `run(feeds) -> list[np.ndarray]`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from fleet_protocol.cameras import Camera
from fleet_protocol.manifest import Manifest
from fleet_protocol.messages import Detection

from ..preprocess import Geometry, Preprocessor
from .postprocess import (
    BoxDecoder,
    CropReader,
    UnsupportedModel,
    build,
    plugin_class,
    tasks,
)


class Model(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def manifest(self) -> Manifest: ...
    @property
    def session(self) -> Any: ...

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


class Host(Protocol):
    def get(self, name: str) -> Model | None: ...
    def names(self) -> list[str]: ...


class ModelUnavailable(RuntimeError):
    """A camera's model is not on the device, or cannot play its part in the pipeline: the message says why."""


def describe(model: Model) -> str:
    return f"{model.name} {model.version}"


class Detector:
    """The first stage: preprocess a frame as the manifest says, run the model, decode boxes in frame pixels."""

    def __init__(self, model: Model, *, resize: Literal["stretch", "letterbox"] | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        self.model = model
        post = build(model.manifest, overrides)
        if not isinstance(post, BoxDecoder):
            raise UnsupportedModel(role_error(model.manifest, "detector"))
        self.post = post
        first = model.session.get_inputs()[0]
        self.input_name = first.name
        self.output_names = [o.name for o in model.session.get_outputs()]
        extra = model.manifest.extra
        self.pre = Preprocessor(model.manifest.preprocessing, tuple(first.shape), resize or extra.get("resize") or "stretch")
        self.labels = self.post.labels

    def preprocess(self, image: np.ndarray, frame_size: tuple[int, int] | None = None) -> tuple[np.ndarray, Geometry]:
        """`frame_size` (w, h): the source frame's size when `image` was decoded smaller, so boxes come out
        in pixels of the source frame all the same."""
        return self.pre(image, frame_size)

    def decode_scale(self, frame_size: tuple[int, int]) -> int:
        return self.pre.decode_scale(frame_size)

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.model.run({self.input_name: x}), strict=True))

    def postprocess(self, outputs: dict[str, np.ndarray], geo: Geometry) -> list[Detection]:
        rows = self.post(outputs)
        if len(rows) == 0:
            return []
        boxes = geo.to_frame(rows)
        out = []
        for (x1, y1, x2, y2), score, cls in zip(boxes.tolist(), rows[:, 4].tolist(), rows[:, 5].astype(int).tolist(), strict=True):
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue  # a box that lies outside the frame entirely
            label = self.labels[cls] if 0 <= cls < len(self.labels) else str(cls)
            out.append(Detection(label=label, score=round(score, 4), box=(round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1))))
        return out

    def __call__(self, image: np.ndarray) -> list[Detection]:
        x, geo = self.preprocess(image)
        return self.postprocess(self.infer(x), geo)


class Reader:
    """A later stage: every crop of a frame in one batch through the model and its crop plug-in."""

    def __init__(self, model: Model) -> None:
        self.model = model
        post = build(model.manifest)
        if not isinstance(post, CropReader):
            raise UnsupportedModel(role_error(model.manifest, "stage"))
        self.post = post
        self.input_name = model.session.get_inputs()[0].name

    def __call__(self, crops: list[np.ndarray], detections: list[Detection]) -> tuple[list[np.ndarray], list[Detection]]:
        if not crops:
            return crops, detections
        x = self.post.prepare(crops, self.model.manifest.preprocessing)
        return self.post.apply(self.model.run({self.input_name: x}), crops, detections)


def role_error(manifest: Manifest, part: Literal["detector", "stage"]) -> str:
    if part == "detector":
        return (f"{manifest.name} ({manifest.task}) cannot be a camera's detector: it gives no boxes "
                f"(detector tasks: {', '.join(tasks('boxes'))})")
    return (f"{manifest.name} ({manifest.task}) cannot be a later stage: it does not read crops "
            f"(stage tasks: {', '.join(tasks('crops'))})")


def check(camera: Camera, manifests: dict[str, Manifest]) -> str | None:
    """Why these models cannot play their parts in `camera` (None: they can), judged from the manifests alone.

    A model the camera names that is not among `manifests` is not judged: models are rolled out one by one,
    so OCR detection may well arrive before recognition (the camera reports the missing one meanwhile)."""
    for i, name in enumerate(camera.models()):
        manifest = manifests.get(name)
        if manifest is None:
            continue
        part: Literal["detector", "stage"] = "detector" if i == 0 else "stage"
        try:
            cls = plugin_class(manifest)
            if cls.role != ("boxes" if part == "detector" else "crops"):
                return role_error(manifest, part)
            build(manifest, camera.postprocess if part == "detector" else None)
        except UnsupportedModel as exc:
            return f"{name}: {exc}"
    return None


class Chain:
    """The detector and readers of one camera, bound to particular loaded models."""

    def __init__(self, detector: Detector, readers: list[Reader]) -> None:
        self.detector = detector
        self.readers = readers

    def describe(self) -> str:
        return " → ".join(describe(m) for m in self.models())

    def models(self) -> list[Model]:
        return [self.detector.model, *(r.model for r in self.readers)]

    def read(self, image: np.ndarray, frame_size: tuple[int, int], detections: list[Detection]) -> list[Detection]:
        """Run the readers on the crops of `detections` (boxes in `frame_size` pixels, `image` at any scale)."""
        if not self.readers or not detections:
            return detections
        crops_kept: list[np.ndarray] = []
        dets: list[Detection] = []
        for d in detections:
            c = crop(image, d.box, frame_size)
            if c is not None:  # a box too thin to read is dropped from the frame's result
                crops_kept.append(c)
                dets.append(d)
        for reader in self.readers:
            crops_kept, dets = reader(crops_kept, dets)
        return dets


def crop(image: np.ndarray, box: tuple[float, float, float, float], frame_size: tuple[int, int]) -> np.ndarray | None:
    fw, fh = frame_size
    sx, sy = image.shape[1] / fw, image.shape[0] / fh
    x1, y1 = max(0, int(np.floor(box[0] * sx))), max(0, int(np.floor(box[1] * sy)))
    x2, y2 = min(image.shape[1], int(np.ceil(box[2] * sx))), min(image.shape[0], int(np.ceil(box[3] * sy)))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    out = image[y1:y2, x1:x2]
    return cv2.cvtColor(out, cv2.COLOR_GRAY2BGR) if out.ndim == 2 else out


class Resolver:
    """camera → its Chain for this frame, rebuilt only when the host serves another model object for a name."""

    def __init__(self, camera: Camera, host: Host) -> None:
        self.camera = camera
        self.host = host
        self._key: tuple | None = None
        self._chain: Chain | None = None
        self._error: str | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Chain:
        models = [self.host.get(name) for name in self.camera.models()]
        missing = [n for n, m in zip(self.camera.models(), models, strict=True) if m is None]
        if missing:
            raise ModelUnavailable(f"model {missing[0]!r} is not on this device"
                                   + (f" (nor {', '.join(map(repr, missing[1:]))})" if missing[1:] else ""))
        present = [m for m in models if m is not None]
        key = tuple(id(m) for m in present)
        with self._lock:
            if key != self._key:
                self._key, self._chain, self._error = key, None, None
                try:
                    self._chain = Chain(Detector(present[0], resize=self.camera.resize, overrides=self.camera.postprocess),
                                        [Reader(m) for m in present[1:]])
                except (UnsupportedModel, ValueError) as exc:
                    self._error = str(exc)
            if self._chain is None:
                raise ModelUnavailable(self._error or "no chain")
            return self._chain

    @property
    def current(self) -> Chain | None:
        """The chain of the latest frame (for the capture thread's preprocessing and the page)."""
        return self._chain


Resolve = Callable[[], Chain]
