"""Which live inputs are kept for the fleet's datasets, decided where they pass and prepared off their path.

Callers (the request path's tap, a camera's worker, the shadow's worker) `offer` a sample: whether it is kept is
decided at once, in O(1) (`Desired.capture` opted in, the live answer unsure or the shadow candidate disagreeing,
the caps), and a kept one is queued for one worker thread that makes it what leaves the device: an HTTP input
tensor as `.npy`; a camera frame blurred (BlazeFace) and as a JPEG that fits one message. The queue is small and
drops what does not fit (counted `queue_full`): a burst never costs a request more than the decision.

Privacy: with `blur_faces` on, a camera frame is kept only when a face detector is at hand (else counted
`no_face_detector`) and only after FaceBlur found no face left in it; an input tensor cannot be checked for faces
reliably, so it is not kept at all (`cannot_blur`). Nothing is sent unblurred that was asked to be blurred.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fleet_protocol.capture import MAX_HEADER_BYTES, MAX_SAMPLE_BYTES, Sample, describe
from fleet_protocol.manifest import Manifest
from fleet_protocol.messages import Capture, Detection

from .capture import CaptureGate, FaceBlur, FindFaces, Spool, fit_jpeg, new_sample_id
from .drift import confidence

log = logging.getLogger(__name__)

NPY_HEADER = 128  # np.save's header for a plain array: the .npy is the tensor's bytes and this
JPEG_RATIO = 8  # a first guess of a frame's JPEG size (raw bytes / this), corrected once it is encoded
MAX_ITEMS = 64  # classification answers per sample (a batch); detections beyond what fits the header are cut


class Source(Protocol):
    """The model that answered (a LoadedModel)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def manifest(self) -> Manifest: ...


@dataclass(slots=True)
class _Job:
    fields: dict[str, Any]  # the header's fields known when it was offered
    estimate: int  # the size the gate counted it with
    tensor: np.ndarray | None = None
    model: Source | None = None  # whose answer `outputs` is, for the provisional labels (made on the worker)
    outputs: Sequence[np.ndarray] = ()
    frame: Callable[[], np.ndarray] | None = None  # the source frame (BGR), decoded at full size on the worker
    frame_size: tuple[int, int] = (1, 1)  # (w, h) the detections' boxes are given in
    detections: Sequence[Detection] = ()


def provisional_labels(manifest: Manifest, outputs: Sequence[np.ndarray]) -> dict[str, Any]:
    """The live model's answer in the task's terms, for the header: top-1 label and score per item for
    classification; the best score for detection (boxes need the camera's decoder: camera samples carry them)."""
    if not outputs:
        return {}
    if manifest.task == "classification":
        scores = np.asarray(outputs[0])
        rows = scores.reshape(scores.shape[0], -1) if scores.ndim > 1 else scores.reshape(1, -1)
        items = []
        for row in rows[:MAX_ITEMS]:
            i = int(row.argmax())
            label = manifest.labels[i] if i < len(manifest.labels) else str(i)
            items.append({"label": label[:128], "score": round(confidence("classification", [row]) or 0.0, 4)})
        return items[0] if len(items) == 1 else {"items": items}
    if manifest.task == "detection":
        best = confidence("detection", outputs)
        return {} if best is None else {"score": round(best, 4)}
    return {}


def detections_header(fields: dict[str, Any], detections: Sequence[Detection], data: bytes, scale: float = 1.0) -> Sample:
    """The header with as many detections (most confident first) as fit MAX_HEADER_BYTES; boxes in pixels of
    the JPEG (`scale`: its size over the source frame's, when it had to be made smaller)."""
    ranked = sorted(detections, key=lambda d: -d.score)
    keep = len(ranked)
    while True:
        dets = [{**d.model_dump(exclude_none=True), "box": [round(v * scale, 1) for v in d.box]} for d in ranked[:keep]]
        outputs = {"detections": dets, **({"truncated": len(ranked) - keep} if keep < len(ranked) else {})}
        header = describe(data, **fields, outputs=outputs)
        if len(header.to_bytes()) <= MAX_HEADER_BYTES or keep == 0:
            return header
        keep //= 2


class Sampler:
    def __init__(self, spool: Spool, *, find_faces: Callable[[], FindFaces | None] = lambda: None,
                 on_kept: Callable[[], None] | None = None, queue_size: int = 8,
                 clock: Callable[[], float] = time.time) -> None:
        self.spool = spool
        self.find_faces = find_faces  # the face detector at hand now, if any (it may come and go with models)
        self.on_kept = on_kept  # a sample reached the spool (the uploader's wake-up)
        self.clock = clock
        self.gate = CaptureGate(Capture(), clock)
        self.kept: Counter[str] = Counter()  # by why: low_confidence, shadow_disagrees
        self.skipped: Counter[str] = Counter()  # qualified or offered, not kept, by why
        self._queue: deque[_Job] = deque()
        self._queue_size = queue_size
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="capture", daemon=True)

    @property
    def enabled(self) -> bool:
        return self.gate.policy.enabled

    def update(self, policy: Capture) -> None:
        """Every desired state: the policy as the fleet sets it now (what was kept still counts against the caps)."""
        with self._lock:
            self.gate.update(policy)

    def not_opted_in(self) -> None:
        """An answer seen while the device does not take part (the tap asks nothing else then)."""
        self.skipped["not_opted_in"] += 1

    # --- offering: the callers' threads, O(1) ---------------------------------------------------------------
    def offer_tensor(self, model: Source, feeds: Mapping[str, np.ndarray], outputs: Sequence[np.ndarray],
                     conf: float | None, shadow_version: str | None = None) -> bool:
        """An HTTP request's input (or the one the shadow candidate disagreed on) with the live answer."""
        policy = self.gate.policy
        if not policy.enabled:
            self.not_opted_in()
            return False
        why = self.gate.qualifies(conf, False if shadow_version is not None else None)
        if why is None:
            return False
        if policy.blur_faces:
            self.skipped["cannot_blur"] += 1  # a tensor cannot be checked for faces: never sent when asked to blur
            return False
        if len(feeds) != 1:
            self.skipped["multi_input"] += 1  # one .npy holds one array; half an input is no sample
            return False
        tensor = next(iter(feeds.values()))
        estimate = tensor.nbytes + NPY_HEADER
        if estimate > MAX_SAMPLE_BYTES:
            self.skipped["too_large"] += 1
            return False
        if not self._admit(estimate, conf, shadow_version):
            return False
        fields = self._fields(model, why, conf, shadow_version, camera=None)
        self._enqueue(_Job(fields, estimate, tensor=tensor, model=model, outputs=outputs))
        return True

    def offer_frame(self, camera: str, model: Source, frame: Callable[[], np.ndarray], frame_size: tuple[int, int],
                    outputs: Sequence[np.ndarray], detections: Sequence[Detection]) -> bool:
        """A camera frame (`frame` gives it at full size, BGR; called on the worker) with the live detections."""
        policy = self.gate.policy
        if not policy.enabled:
            self.not_opted_in()
            return False
        conf = confidence(model.manifest.task, outputs)
        why = self.gate.qualifies(conf, None)
        if why is None:
            return False
        if policy.blur_faces and self.find_faces() is None:
            self.skipped["no_face_detector"] += 1
            return False
        w, h = frame_size
        estimate = min(MAX_SAMPLE_BYTES, max(1, w * h * 3 // JPEG_RATIO))
        if not self._admit(estimate, conf, None):
            return False
        fields = self._fields(model, why, conf, None, camera=camera)
        self._enqueue(_Job(fields, estimate, frame=frame, frame_size=frame_size, detections=list(detections)))
        return True

    def _fields(self, model: Source, why: str, conf: float | None, shadow_version: str | None,
                camera: str | None) -> dict[str, Any]:
        return {"model": model.name, "version": model.version, "camera": camera, "taken_at": self.clock(),
                "reason": why, "confidence": None if conf is None else min(1.0, max(0.0, conf)),
                "shadow_version": shadow_version}

    def _admit(self, estimate: int, conf: float | None, shadow_version: str | None) -> bool:
        """The decision, before anything is built for the sample: room in the queue, then the caps."""
        with self._lock:
            if len(self._queue) >= self._queue_size:
                self.skipped["queue_full"] += 1
                return False
            decision = self.gate.decide(estimate, conf, False if shadow_version is not None else None)
            if not decision.keep:
                self.skipped[decision.reason] += 1
                return False
        return True

    def _enqueue(self, job: _Job) -> None:
        # Admitted a moment ago: callers racing in between may pass the queue's bound by one each, no more.
        with self._lock:
            self._queue.append(job)
            self._wake.notify()

    # --- the worker ---------------------------------------------------------------------------------------
    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def drain(self) -> None:
        """Process every queued sample on the calling thread (a sampler not started: tests)."""
        while True:
            with self._lock:
                if not self._queue:
                    return
                job = self._queue.popleft()
            self.process(job)

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                job = self._queue.popleft()
            self.process(job)

    def process(self, job: _Job) -> None:
        """Make one kept sample what leaves the device and spool it (the worker's step)."""
        try:
            prepared = self._prepare(job)
            if not isinstance(prepared, str):
                self.spool.put(*prepared)
        except Exception as exc:  # one odd input, or a full disk, must not end capture
            log.warning("captured sample not kept: %s", exc)
            prepared = "error"
        if isinstance(prepared, str):
            self.skipped[prepared] += 1
            with self._lock:
                self.gate.correct(-job.estimate)  # never kept: its bytes do not count (its hourly slot does)
            return
        header, data = prepared
        with self._lock:
            self.gate.correct(len(data) - job.estimate)
        self.kept[header.reason] += 1
        if self.on_kept is not None:
            self.on_kept()

    def _prepare(self, job: _Job) -> tuple[Sample, bytes] | str:
        fields = {**job.fields, "id": new_sample_id()}
        if job.tensor is not None:
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(job.tensor), allow_pickle=False)
            data = buffer.getvalue()
            if len(data) > MAX_SAMPLE_BYTES:
                return "too_large"
            labels = provisional_labels(job.model.manifest, job.outputs) if job.model is not None else {}
            return describe(data, **fields, outputs=labels, content_type="application/x-npy"), data
        assert job.frame is not None
        image = job.frame()
        blurred = False
        if self.gate.policy.blur_faces:
            find = self.find_faces()
            if find is None:  # the detector went since the offer (its model was removed)
                return "no_face_detector"
            clean = FaceBlur(find)(image)
            if clean is None:
                return "face_not_removed"
            image, blurred = clean, True
        data, width, height = fit_jpeg(image)
        fields.update(content_type="image/jpeg", width=width, height=height, faces_blurred=blurred)
        return detections_header(fields, job.detections, data, width / job.frame_size[0]), data

    # --- numbers ------------------------------------------------------------------------------------------
    def queued(self) -> int:
        return len(self._queue)
