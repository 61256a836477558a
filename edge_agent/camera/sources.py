"""Camera sources as plug-ins: one small class per kind, chosen by the config's `type`.

A source is opened, then `grab()` takes the next frame off the wire and `retrieve()` decodes it. The split
lets a frame-rate cap skip decoding for a live camera while still draining it, so what we decode is always
the newest frame and never one from a buffer that fell behind.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from fleet_protocol import cameras as spec

from ..preprocess import REDUCED

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """The source cannot be opened or stopped delivering; the message names it."""


class EndOfStream(Exception):
    """A (non-looping) file ran out of frames: the normal end, not a failure."""


class CorruptFrame(Exception):
    """One frame could not be decoded; the next one may well be fine."""


class Source:
    kind: ClassVar[str]
    live: ClassVar[bool] = True  # a live source drops what we do not take; a file waits for us
    frame_size: tuple[int, int] | None = None  # (w, h) of the frames at full size, once known
    jpeg: np.ndarray | None = None  # the last frame's JPEG when it was decoded smaller than full size

    @property
    def waits_for_reader(self) -> bool:
        """True when frames are not tied to a clock: the reader may take its time, nothing goes stale."""
        return False
    registry: ClassVar[dict[str, type[Source]]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:  # shared bases (the OpenCV one) define no kind of their own
            Source.registry[cls.kind] = cls

    def __init__(self, config) -> None:
        self.config = config
        self.name = config.describe()  # what logs, events and pages show: never a password

    def open(self) -> None:
        raise NotImplementedError

    def grab(self) -> None:
        raise NotImplementedError

    def retrieve(self, scale: int = 1) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def pace(self) -> None:
        """Wait until the next frame is due (a file played in real time); live sources never wait here."""

    def read(self, scale: int = 1) -> np.ndarray:
        """The next frame. A JPEG source may decode it `scale` (2, 4, 8) times smaller: libjpeg scales inside
        the inverse DCT, for a fraction of the work, and the JPEG stays in `jpeg` for whoever wants it whole."""
        self.grab()
        return self.retrieve(scale)

    def _decode_jpeg(self, data: np.ndarray, scale: int) -> np.ndarray | None:
        self.jpeg = None
        if scale in REDUCED and self.frame_size:
            w, h = self.frame_size
            img = cv2.imdecode(data, REDUCED[scale])
            if img is not None and img.shape[:2] == (-(-h // scale), -(-w // scale)):
                self.jpeg = data
                return img
        # Full size, and whenever the reduced one does not fit the size we know (the camera changed mode).
        img = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if img is not None:
            self.frame_size = (img.shape[1], img.shape[0])
        return img


def create(config) -> Source:
    return Source.registry[config.type](config)


class _OpenCvSource(Source):
    """Everything cv2.VideoCapture reads (devices, files, RTSP through FFmpeg)."""

    cap: cv2.VideoCapture | None = None
    # MJPEG through FFmpeg: take the JPEG packets and decode them with libjpeg-turbo (cv2.imdecode), which can
    # decode at reduced size. A 640×480 frame costs ~1.0 ms of CPU through FFmpeg's decoder and YUV → BGR
    # conversion (on a helper thread), ~0.85 ms through imdecode and ~0.65 ms at half size: CPU that inference
    # on a small device would otherwise get. Off for good once a stream's packets turn out to be something
    # imdecode does not read as FFmpeg would (e.g. interlaced fields, one JPEG each).
    jpeg_packets = True
    _packets = False
    _checked = False

    def _capture(self) -> cv2.VideoCapture:
        raise NotImplementedError

    def open(self) -> None:
        self.close()
        cap = self._capture()
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.name}")
        self.cap = cap
        self._packets = (self.jpeg_packets and cap.getBackendName() == "FFMPEG"
                         and int(cap.get(cv2.CAP_PROP_FOURCC)) == cv2.VideoWriter.fourcc(*"MJPG")
                         and cap.set(cv2.CAP_PROP_FORMAT, -1))
        self._size = (int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)))
        self._checked = False
        self.frame_size = self.jpeg = None

    def grab(self) -> None:
        if self.cap is None or not self.cap.grab():
            raise SourceError(f"{self.name} stopped delivering frames")

    def retrieve(self, scale: int = 1) -> np.ndarray:
        ok, frame = self.cap.retrieve() if self.cap is not None else (False, None)
        if self._packets and ok and frame is not None and frame.size:
            if self._checked:
                frame = self._decode_jpeg(frame, scale)
            else:
                frame = cv2.imdecode(frame, cv2.IMREAD_COLOR)
                if frame is None or frame.shape[:2] != self._size:
                    # The very first packet already disagrees with what FFmpeg reports: not a stream for imdecode.
                    log.info("%s: JPEG packets not decodable on their own, decoding with FFmpeg", self.name)
                    self.jpeg_packets = False
                    self._reopen_at_start()
                    return self.retrieve()
                self._checked = True
                self.frame_size, self.jpeg = (frame.shape[1], frame.shape[0]), None
        elif ok and frame is not None and frame.size:
            self.frame_size, self.jpeg = (frame.shape[1], frame.shape[0]), None
        if not ok or frame is None or frame.size == 0:
            raise CorruptFrame(f"{self.name}: undecodable frame")
        return frame

    def _reopen_at_start(self) -> None:
        self.open()
        self.grab()

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class DeviceSource(_OpenCvSource):
    kind = "device"
    config: spec.DeviceSource

    def _capture(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self.config.index)
        if self.config.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.width)
        if self.config.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.height)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # a driver-side backlog is latency we would never catch up on
        return cap


class FileSource(_OpenCvSource):
    kind = "file"
    live = False
    config: spec.FileSource

    def _capture(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(self.config.path)

    def open(self) -> None:
        if not Path(self.config.path).is_file():
            raise SourceError(f"cannot open {self.name}: no such file")
        super().open()
        assert self.cap is not None  # open() either set it or raised
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.period = 1.0 / fps if fps and 1 <= fps <= 240 else 1 / 25
        self._due = time.monotonic()

    @property
    def waits_for_reader(self) -> bool:
        return not self.config.realtime

    def pace(self) -> None:
        if self.config.realtime:
            # Play at the file's own rate, as a camera would deliver it.
            now = time.monotonic()
            if self._due > now:
                time.sleep(self._due - now)
            self._due = max(self._due, now - self.period) + self.period

    def grab(self) -> None:
        if self.cap is not None and self.cap.grab():
            return
        if self.cap is None:
            raise SourceError(f"{self.name} is not open")
        if not self.config.loop:
            raise EndOfStream(self.name)
        self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        if not self.cap.grab():
            raise SourceError(f"{self.name}: cannot rewind to loop")


class RtspSource(_OpenCvSource):
    kind = "rtsp"
    config: spec.RtspSource

    def _capture(self) -> cv2.VideoCapture:
        ms = int(self.config.timeout_s * 1000)
        # Without timeouts FFmpeg can block for minutes on a camera that vanished, and we would never reconnect.
        return cv2.VideoCapture(self.config.url, cv2.CAP_FFMPEG,
                                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])


class MjpegSource(Source):
    """multipart/x-mixed-replace JPEG over HTTP (IP cameras, another agent's /stream).

    Read with our own parser rather than FFmpeg: it honours a socket timeout on every read, so a camera that
    goes silent is noticed within `timeout_s`, and a part that is not a JPEG costs one frame, not the stream.
    """

    kind = "mjpeg"
    config: spec.MjpegSource
    MAX_PART = 32 << 20

    def __init__(self, config) -> None:
        super().__init__(config)
        self._resp = None
        self._boundary = b""
        self._data = b""
        self._at_part = False  # the boundary line of the next part was already consumed

    def open(self) -> None:
        self.close()
        try:
            resp = urllib.request.urlopen(self.config.url, timeout=self.config.timeout_s)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SourceError(f"cannot open {self.name}: {reason}") from None
        ctype = resp.headers.get("Content-Type", "")
        if "multipart" not in ctype or "boundary=" not in ctype:
            resp.close()
            raise SourceError(f"cannot open {self.name}: not an MJPEG stream (Content-Type {ctype!r})")
        self._boundary = b"--" + ctype.split("boundary=", 1)[1].split(";")[0].strip().strip('"').removeprefix("--").encode()
        self._resp = resp
        self._at_part = False

    def _readline(self) -> bytes:
        resp = self._resp
        if resp is None:  # closed by stop() from another thread
            raise SourceError(f"{self.name} is not open")
        try:
            line = resp.readline(65536)
        except (OSError, ValueError, AttributeError) as exc:
            raise SourceError(f"{self.name} stopped delivering frames: {exc}") from None
        if not line:
            raise SourceError(f"{self.name} closed the stream")
        return line

    def grab(self) -> None:
        if self._resp is None:
            raise SourceError(f"{self.name} is not open")
        if not self._at_part:
            while not self._readline().startswith(self._boundary):
                pass
        headers = {}
        while (line := self._readline().strip()):
            key, _, value = line.partition(b":")
            headers[key.strip().lower()] = value.strip()
        self._at_part = False
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) <= self.MAX_PART:
            try:
                data = self._resp.read(int(length))
            except (OSError, ValueError) as exc:
                raise SourceError(f"{self.name} stopped delivering frames: {exc}") from None
            if len(data) < int(length):
                raise SourceError(f"{self.name} closed the stream mid-frame")
        else:
            chunks, size = [], 0
            while not (line := self._readline()).startswith(self._boundary):
                chunks.append(line)
                size += len(line)
                if size > self.MAX_PART:
                    raise SourceError(f"{self.name}: a part larger than {self.MAX_PART} bytes")
            self._at_part = True
            data = b"".join(chunks)
        self._data = data

    def retrieve(self, scale: int = 1) -> np.ndarray:
        frame = self._decode_jpeg(np.frombuffer(self._data, np.uint8), scale) if self._data else None
        if frame is None:
            raise CorruptFrame(f"{self.name}: a part that is not a decodable image ({len(self._data)} bytes)")
        return frame

    def close(self) -> None:
        if self._resp is not None:
            try:
                self._resp.close()
            except OSError:
                pass
            self._resp = None


# Every config kind must have its plug-in; a new kind without one fails at import, not on a device.
assert set(Source.registry) == {"device", "file", "rtsp", "mjpeg"}, Source.registry
