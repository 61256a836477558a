"""Where data capture gets its face detector: a configured BlazeFace bundle first, else a served BlazeFace model,
else none (and then no camera frame is captured while blurring is asked)."""

from __future__ import annotations

import cv2

from edge_agent.camera.faces import FaceFinder
from edge_agent.camera.model import StaticHost


def a_face_frame(face_video):
    cap = cv2.VideoCapture(str(face_video.path))
    try:
        for boxes in face_video.boxes:
            ok, frame = cap.read()
            assert ok
            if boxes:
                return frame
    finally:
        cap.release()
    raise AssertionError("no frame with a face")


def test_a_configured_bundle_first_then_a_served_blazeface_then_none(blazeface, blazeface_bundle, ppocr, keys,
                                                                     face_video, tmp_path):
    frame = a_face_frame(face_video)
    configured = FaceFinder(StaticHost([]), blazeface_bundle, [keys.public], work_dir=tmp_path)
    find = configured()
    assert find is not None and len(find(frame)) >= 1

    served = FaceFinder(StaticHost([ppocr["ppocr-det"], blazeface]))
    find = served()
    assert find is not None and len(find(frame)) >= 1
    assert served._served is not None and served._served[0] == id(blazeface)

    assert FaceFinder(StaticHost([ppocr["ppocr-det"]]))() is None  # a detector, but not of faces
    missing = FaceFinder(StaticHost([]), tmp_path / "nope.bundle", [keys.public])
    assert missing() is None and missing() is None  # said once in the log, then quietly None
    # A bad configured file falls back to what is served.
    assert FaceFinder(StaticHost([blazeface]), tmp_path / "nope.bundle", [keys.public])() is not None
