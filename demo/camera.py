"""`make camera-demo`: the camera pipeline on a real webcam when there is one, else on a video made here from
`skimage.data` photos (faces moving over a background). Opens nothing: it prints the URL to open.

    python -m demo.camera                   webcam 0 if it delivers frames, else the generated video
    python -m demo.camera --source FILE     any SRC the agent takes (index, file, rtsp://, http:// MJPEG)
    python -m demo.camera --seconds 10      exit after 10 s (otherwise: until Ctrl-C)
    python -m demo.camera --ocr             PP-OCR det → rec reading text moving over a photo (a video made here)

The face detector is BlazeFace from model_tools' zoo, packed into a bundle signed with a throw-away key, so
the demo loads it exactly the way a device does (signature and digests verified).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEMO_DIR = Path(".demo/camera")
WIDTH, HEIGHT = 640, 480

# The astronaut's face in skimage.data.astronaut() (512×512), hand-labelled hairline to chin, cheek to cheek
# (the same box model_tools' BlazeFace evaluation uses), and the patch around it that is pasted into frames.
FACE_BOX = (180, 75, 275, 178)
PATCH = (120, 30, 340, 250)  # x1, y1, x2, y2


@dataclass(frozen=True)
class VideoTruth:
    path: Path
    fps: float
    boxes: list[list[tuple[float, float, float, float]]]  # per frame, the faces' boxes in pixels

    @property
    def face_frames(self) -> list[int]:
        return [i for i, b in enumerate(self.boxes) if b]

    @property
    def empty_frames(self) -> list[int]:
        return [i for i, b in enumerate(self.boxes) if not b]


def _face_patch(mirror: bool) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    from skimage import data

    x1, y1, x2, y2 = PATCH
    patch = data.astronaut()[y1:y2, x1:x2, ::-1]  # RGB → BGR, as OpenCV writes
    fx1, fy1, fx2, fy2 = FACE_BOX[0] - x1, FACE_BOX[1] - y1, FACE_BOX[2] - x1, FACE_BOX[3] - y1
    if mirror:
        w = x2 - x1
        patch, (fx1, fx2) = patch[:, ::-1], (w - fx2, w - fx1)
    side = x2 - x1
    return np.ascontiguousarray(patch), (fx1 / side, fy1 / side, fx2 / side, fy2 / side)


def _background(t: float) -> np.ndarray:
    """A slow pan over skimage's coffee photo: the background moves too, as it would for a real camera."""
    import cv2
    from skimage import data

    bg = data.coffee()[:, :, ::-1]  # 400×600
    big = cv2.resize(bg, (int(WIDTH * 1.2), int(HEIGHT * 1.2)), interpolation=cv2.INTER_LINEAR)
    dx = int((big.shape[1] - WIDTH) * (0.5 + 0.5 * np.sin(t)))
    return big[(big.shape[0] - HEIGHT) // 2:(big.shape[0] - HEIGHT) // 2 + HEIGHT, dx:dx + WIDTH].copy()


def make_video(path: Path, *, fps: float = 30.0, seconds: float = 4.0, empty_s: float = 0.5) -> VideoTruth:
    """640×480 MJPEG/AVI: `empty_s` without a face, then one face crossing the frame while it grows, then two
    (the second mirrored) moving apart, then `empty_s` without a face again. Returns each frame's true boxes."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), fps, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write MJPEG/AVI here")
    faces = [_face_patch(False), _face_patch(True)]
    n = int(round(seconds * fps))
    empty = int(round(empty_s * fps))
    truth: list[list[tuple[float, float, float, float]]] = []
    for i in range(n):
        frame = _background(i / fps)
        boxes = []
        if empty <= i < n - empty:
            u = (i - empty) / max(1, n - 2 * empty - 1)  # 0 → 1 over the face segment
            if u < 0.5:  # one face crossing and growing
                placements = [(40 + 720 * u, 30 + 340 * u, 200 + 80 * u)]  # x, y, side of the patch
            else:  # two faces, apart, one moving down and one up
                v = (u - 0.5) * 2
                placements = [(30, 20 + 220 * v, 200), (400, 260 - 220 * v, 210)]
            for (patch, rel), (x, y, side) in zip(faces, placements, strict=False):
                x, y, side = int(x), int(y), int(side)
                side = min(side, WIDTH - x, HEIGHT - y)
                frame[y:y + side, x:x + side] = cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA)
                boxes.append((x + rel[0] * side, y + rel[1] * side, x + rel[2] * side, y + rel[3] * side))
        writer.write(frame)
        truth.append(boxes)
    writer.release()
    tmp.replace(path)
    (path.with_suffix(".json")).write_text(json.dumps({"fps": fps, "boxes": truth}))
    return VideoTruth(path, fps, truth)


# Words the recognizer can be held to: no glyphs that even a person cannot tell apart in Hershey fonts
# (0/O, 1/I/l …; the zoo's ALPHABET), as signs and number plates would carry.
TEXT_LINES = ("EDGEFLEET 42", "GATE B7", "TRUCK KM 3865")


@dataclass(frozen=True)
class TextTruth:
    path: Path
    fps: float
    lines: list[list[tuple[str, tuple[float, float, float, float]]]]  # per frame: (text, box in pixels)


def make_text_video(path: Path, *, fps: float = 25.0, seconds: float = 4.0, texts: tuple[str, ...] = TEXT_LINES) -> TextTruth:
    """640×480 MJPEG/AVI: lines of text (cv2.putText, dark ink with a light halo, as on a sign) moving over a
    panning skimage photo, each at its own speed. Returns every frame's lines with their true boxes."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), fps, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write MJPEG/AVI here")
    font, scale, thick = cv2.FONT_HERSHEY_DUPLEX, 1.3, 2
    n = int(round(seconds * fps))
    truth = []
    for i in range(n):
        t = i / fps
        frame = _background(t)
        lines = []
        for k, text in enumerate(texts):
            (tw, th), base = cv2.getTextSize(text, font, scale, thick)
            span = WIDTH - tw - 40
            # Each line drifts back and forth across the frame at its own pace, and a little up and down.
            x = 20 + span * (0.5 + 0.5 * np.sin(0.6 * t * (k + 1) + k))
            y = 90 + k * 140 + 25 * np.sin(0.8 * t + 2 * k)
            org = (int(x), int(y))
            cv2.putText(frame, text, org, font, scale, (245, 245, 245), thick + 6, cv2.LINE_AA)
            cv2.putText(frame, text, org, font, scale, (25, 25, 25), thick, cv2.LINE_AA)
            lines.append((text, (org[0], org[1] - th, org[0] + tw, org[1] + base)))
        writer.write(frame)
        truth.append(lines)
    writer.release()
    tmp.replace(path)
    return TextTruth(path, fps, truth)


def webcam_works(index: int = 0) -> bool:
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    cap = cv2.VideoCapture(index)
    try:
        return bool(cap.isOpened() and cap.read()[0])
    finally:
        cap.release()


def demo_bundle(folder: Path, name: str = "blazeface") -> tuple[Path, Path]:
    """A zoo model (BlazeFace by default), packed and signed with a key made for the demo: (bundle, public key)."""
    from fleet_protocol.signing import generate_keypair
    from model_tools.pack import pack_bundle
    from model_tools.zoo import prepare

    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / "demo-signing.pem", folder / "demo-signing.pub.pem"
    if not private.exists():
        priv, pub = generate_keypair()
        public.write_bytes(pub)
        private.write_bytes(priv)
    zoo = prepare(name)
    bundle, _ = pack_bundle(zoo.onnx, name=name, version="1.0.0", golden_inputs=zoo.golden_inputs,
                            private_key_pem=private.read_bytes(), out_dir=folder, task=zoo.task, labels=zoo.labels,
                            preprocessing=zoo.preprocessing, extra=zoo.extra, force=True)
    return bundle, public


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make camera-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="SRC instead of webcam-or-generated-video")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--seconds", type=float, default=None, help="exit after this long")
    parser.add_argument("--broker", default=None, help="also send events to this MQTT broker")
    parser.add_argument("--ocr", action="store_true", help="read text (PP-OCRv4 det → rec) instead of finding faces")
    args = parser.parse_args(argv)

    from edge_agent import cli

    source = args.source
    models = ["--model", str(demo_bundle(DEMO_DIR)[0])]
    if args.ocr:
        models = ["--model", str(demo_bundle(DEMO_DIR, "ppocr-det")[0]), "--stage", str(demo_bundle(DEMO_DIR, "ppocr-rec")[0])]
        if source is None:
            video = DEMO_DIR / "text.avi"
            if not video.exists():
                print("making a video of text moving over a skimage.data photo …")
                make_text_video(video, fps=25.0, seconds=12.0)
            source = str(video)
    if source is None:
        if webcam_works(0):
            source = "0"
            print("webcam 0 delivers frames: using it")
        else:
            video = DEMO_DIR / "faces.avi"
            if not video.exists():
                print("no webcam here: making a video from skimage.data photos (faces moving over a background) …")
                make_video(video, fps=30.0, seconds=12.0, empty_s=1.0)
            source = str(video)
            print(f"no webcam here: using {video} (looped)")
    public = demo_bundle(DEMO_DIR)[1]
    command = ["camera", "--source", source, *models, "--trusted-key", str(public),
               "--http-host", args.host, "--http-port", str(args.port), "--log-level", "warning"]
    if Path(source).is_file():
        command.append("--loop")
    if args.seconds:
        command += ["--seconds", str(args.seconds)]
    if args.broker:
        command += ["--broker", args.broker, "--device-id", "camera-demo"]
    else:
        command.append("--print-events")
    print("Ctrl-C to stop.")
    return cli.main(command)


if __name__ == "__main__":
    sys.exit(main())
