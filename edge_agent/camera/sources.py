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
from typing import ClassVar

import cv2
import numpy as np

from .config import DeviceSourceConfig, FileSourceConfig, MjpegSourceConfig, RtspSourceConfig

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

    @property
    def waits_for_reader(self) -> bool:
        """True when frames are not tied to a clock: the reader may take its time, nothing goes stale."""
        return False
    registry: ClassVar[dict[str, type["Source"]]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:  # shared bases (the OpenCV one) define no kind of their own
            Source.registry[cls.kind] = cls

    def __init__(self, config) -> None:
        self.config = config
        self.name = config.describe()

    def open(self) -> None:
        raise NotImplementedError

    def grab(self) -> None:
        raise NotImplementedError

    def retrieve(self) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def pace(self) -> None:
        """Wait until the next frame is due (a file played in real time); live sources never wait here."""

    def read(self) -> np.ndarray:
        self.grab()
        return self.retrieve()


def create(config) -> Source:
    return Source.registry[config.type](config)


class _OpenCvSource(Source):
    """Everything cv2.VideoCapture reads (devices, files, RTSP through FFmpeg)."""

    cap: cv2.VideoCapture | None = None

    def _capture(self) -> cv2.VideoCapture:
        raise NotImplementedError

    def open(self) -> None:
        self.close()
        cap = self._capture()
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.name}")
        self.cap = cap

    def grab(self) -> None:
        if self.cap is None or not self.cap.grab():
            raise SourceError(f"{self.name} stopped delivering frames")

    def retrieve(self) -> np.ndarray:
        ok, frame = self.cap.retrieve() if self.cap is not None else (False, None)
        if not ok or frame is None or frame.size == 0:
            raise CorruptFrame(f"{self.name}: undecodable frame")
        return frame

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class DeviceSource(_OpenCvSource):
    kind = "device"
    config: DeviceSourceConfig

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
    config: FileSourceConfig

    def _capture(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(str(self.config.path))

    def open(self) -> None:
        if not self.config.path.is_file():
            raise SourceError(f"cannot open {self.name}: no such file")
        super().open()
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
    config: RtspSourceConfig

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
    config: MjpegSourceConfig
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
        try:
            line = self._resp.readline(65536)
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

    def retrieve(self) -> np.ndarray:
        frame = cv2.imdecode(np.frombuffer(self._data, np.uint8), cv2.IMREAD_COLOR) if self._data else None
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
