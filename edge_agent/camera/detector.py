"""A detector = the model's preprocessing + one onnxruntime session + its post-processing plug-in.

The post-processing plug-in is built first: a model whose task the camera cannot decode is refused before
anything else is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fleet_protocol.manifest import Manifest, Preprocessing
from fleet_protocol.messages import Detection

from . import detectors
from ..preprocess import Geometry, Preprocessor


@dataclass(frozen=True)
class ModelSpec:
    """What the camera needs to know of a model: the parts of its manifest about feeding and decoding it."""

    name: str
    version: str
    task: str
    preprocessing: Preprocessing | None
    labels: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    key: str = ""  # identity (the bundle's sha256 when known): a new key is a new model

    @classmethod
    def from_manifest(cls, manifest: Manifest, key: str = "") -> "ModelSpec":
        return cls(manifest.name, manifest.version, manifest.task, manifest.preprocessing, list(manifest.labels),
                   dict(manifest.extra), key or f"{manifest.name}@{manifest.version}")

    def describe(self) -> str:
        return f"{self.name} {self.version} ({self.task})"


class Detector:
    def __init__(self, spec: ModelSpec, session, *, resize: Literal["stretch", "letterbox"] | None = None,
                 overrides: dict[str, Any] | None = None, owner: Any = None) -> None:
        self.spec = spec
        self.post = detectors.build(spec.task, spec.extra, spec.labels, overrides)
        self.session = session
        self.owner = owner  # e.g. the engine's LoadedModel: holding it keeps its session alive after a swap
        first = session.get_inputs()[0]
        self.input_name = first.name
        self.output_names = [o.name for o in session.get_outputs()]
        self.pre = Preprocessor(spec.preprocessing, tuple(first.shape), resize or spec.extra.get("resize") or "stretch")
        self.labels = self.post.labels

    def preprocess(self, image: np.ndarray, frame_size: tuple[int, int] | None = None) -> tuple[np.ndarray, Geometry]:
        """`frame_size` (w, h): the source frame's size when `image` was decoded smaller, so boxes come out
        in pixels of the source frame all the same."""
        return self.pre(image, frame_size)

    def decode_scale(self, frame_size: tuple[int, int]) -> int:
        return self.pre.decode_scale(frame_size)

    def infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, {self.input_name: x})))

    def postprocess(self, outputs: dict[str, np.ndarray], geo: Geometry) -> list[Detection]:
        rows = self.post(outputs)
        if len(rows) == 0:
            return []
        boxes = geo.to_frame(rows)
        out = []
        for (x1, y1, x2, y2), score, cls in zip(boxes.tolist(), rows[:, 4].tolist(), rows[:, 5].astype(int).tolist()):
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue  # a box that lies outside the frame entirely
            label = self.labels[cls] if 0 <= cls < len(self.labels) else str(cls)
            out.append(Detection(label=label, score=round(score, 4), box=(round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1))))
        return out

    def __call__(self, image: np.ndarray) -> list[Detection]:
        x, geo = self.preprocess(image)
        return self.postprocess(self.infer(x), geo)
