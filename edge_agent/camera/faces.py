"""The face detector data capture blurs camera frames with (edge_agent/sampler.py, `blur_faces`).

BlazeFace, from the first of:
1. a signed bundle file the agent's settings name (`EDGEFLEET_AGENT_FACE_DETECTOR`), verified with the trusted
   keys like any bundle and loaded once: a device that must blur whatever it serves;
2. a model the device serves whose manifest decodes as BlazeFace (`extra.decoder == "blazeface"`), e.g. the
   camera's own detector or a model a profile adds for this: the fleet decides, nothing to configure.
Neither: None, and the sampler keeps no camera frame while blurring is asked (`no_face_detector`).
The served model is run without its request-path accounting or taps: blurring is not a request, and its input
must never be offered for capture itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..capture import Box, FindFaces
from .model import ModelError, load
from .stages import Detector, Host

log = logging.getLogger(__name__)

DECODER = "blazeface"


class _Uncounted:
    """A served LoadedModel as the Detector sees it, run past its metrics and taps."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.name, self.version, self.sha256 = model.name, model.version, model.sha256
        self.manifest, self.session = model.manifest, model.session

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self.model.run_checked(feeds)
        return [out[n] for n in self.model.output_names]


class FaceFinder:
    """`finder()` → the face detector at hand now (image → face boxes in pixels), or None."""

    def __init__(self, host: Host, bundle: Path | None = None, trusted_keys: Sequence = (),
                 work_dir: Path | None = None) -> None:
        self.host = host
        self.bundle = bundle
        self.trusted_keys = list(trusted_keys)
        self.work_dir = work_dir
        self._configured: Detector | None = None
        self._tried = False
        self._served: tuple[int, Detector] | None = None  # (id of the served model, its detector)

    def __call__(self) -> FindFaces | None:
        detector = self._from_settings() or self._from_host()
        if detector is None:
            return None

        def faces(image: np.ndarray) -> list[Box]:
            return [d.box for d in detector(image)]
        return faces

    def _from_settings(self) -> Detector | None:
        if self.bundle is None or self._tried:
            return self._configured
        self._tried = True  # once: a bad file is said once, not for every frame
        try:
            self._configured = Detector(load(str(self.bundle), self.trusted_keys, work_dir=self.work_dir))
        except (ModelError, ValueError) as exc:
            log.error("face detector %s not usable, blurring falls back to a served BlazeFace: %s", self.bundle, exc)
        return self._configured

    def _from_host(self) -> Detector | None:
        for name in self.host.names():
            model = self.host.get(name)
            if model is None or model.manifest.extra.get("decoder") != DECODER:
                continue
            cached = self._served
            if cached is not None and cached[0] == id(model):
                return cached[1]
            try:  # a LoadedModel runs past its accounting; a stand-alone bundle model has none to skip
                detector = Detector(_Uncounted(model) if hasattr(model, "run_checked") else model)
            except (ValueError, RuntimeError) as exc:
                log.warning("%s cannot find faces for blurring: %s", name, exc)
                continue
            self._served = (id(model), detector)
            return detector
        return None
