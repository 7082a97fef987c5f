"""Frame sources for live video: (source seconds, HxWx3 uint8 RGB frame), in order.

`open_source(SRC)` opens, or fails with one SfedgeError line (exit 2):
* a camera index ("0", "1", ...): V4L2 / USB through OpenCV (`cv2.VideoCapture`); timestamps are
  seconds since the camera was opened (V4L2's own are unreliable across drivers);
* a stream URL (rtsp://, rtsps://, http://, https://, udp://, tcp://, rtmp://, file://): PyAV
  (FFmpeg), RTSP over TCP, timestamps from the stream's pts;
* a video file: PyAV, timestamps from pts (seconds from the first frame).

Cameras and network streams are live; a file (or a file:// URL) is not: it ends at its end, and
`watch` paces it at its real rate with --realtime.

Reconnect policy (live sources only): when a live source stops delivering (a read error, or the
stream ends), it is reopened after waits of RECONNECT_WAITS seconds (0.5, 1, 2, 4, 8); its
timestamps continue from where they stopped, so the ring buffer and the questions' clock never go
back. A reopened source that delivers a frame resets the count. When every attempt fails,
`frames()` raises SourceLost (watch ends with its summary and exit code 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..errors import SfedgeError

RECONNECT_WAITS = (0.5, 1.0, 2.0, 4.0, 8.0)
STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https", "udp", "tcp", "rtmp", "srt", "file")
OPEN_TIMEOUT_S = 10.0  # network streams: opening and each read


class SourceLost(SfedgeError):
    """A live source died and every reconnect attempt failed (exit code 1: the run had started)."""

    exit_code = 1


class Source:
    """Base: `frames()` yields (t seconds, frame); `live` says whether it runs in real time by itself."""

    name: str = "source"
    live: bool = False

    def __init__(self, waits: tuple[float, ...] = RECONNECT_WAITS):
        self.waits, self.reconnects = waits, 0

    def frames(self) -> Iterator[tuple[float, np.ndarray]]:
        offset, last = 0.0, None  # timestamps continue across reconnects
        while True:
            first = None
            try:
                for t, frame in self._read():
                    if first is None:
                        first = t
                        if last is not None and t + offset <= last:  # reopened: never go back in time
                            offset = last + 1e-3 - t
                    last = t + offset
                    yield last, frame
            except SfedgeError:
                if not self.live:
                    raise
            if not self.live:
                return
            self._close()
            if not self._reopen():
                raise SourceLost(f"{self.name}: the source stopped and {len(self.waits)} reconnect attempts "
                                 f"failed")

    def _reopen(self) -> bool:
        for wait in self.waits:
            time.sleep(wait)
            self.reconnects += 1
            try:
                self._open()
                return True
            except SfedgeError:
                continue
        return False

    def _open(self) -> None:
        raise NotImplementedError

    def _read(self) -> Iterator[tuple[float, np.ndarray]]:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    def close(self) -> None:
        self._close()


class CameraSource(Source):
    """A V4L2 / USB camera through OpenCV. `capture`: what opens it (cv2.VideoCapture; tests pass a
    fake device with the same isOpened / read / release methods)."""

    live = True

    def __init__(self, index: int, capture: Callable | None = None, waits: tuple[float, ...] = RECONNECT_WAITS):
        super().__init__(waits)
        if capture is None:
            import cv2

            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # one line of our own instead
            capture = cv2.VideoCapture
        self.index, self.capture, self.cap = index, capture, None
        self.name = f"camera {index}"
        self._open()
        self.t0 = time.monotonic()

    def _open(self) -> None:
        cap = self.capture(self.index)
        if not cap.isOpened():
            cap.release()
            raise SfedgeError(f"cannot open camera {self.index} (no such device, or it is busy)")
        self.cap = cap

    def _read(self):
        import cv2

        while self.cap is not None:
            ok, bgr = self.cap.read()
            if not ok or bgr is None:
                return
            yield time.monotonic() - self.t0, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class AvSource(Source):
    """A video file or a stream URL through PyAV: frames in presentation order, t from their pts."""

    def __init__(self, target: str, live: bool, waits: tuple[float, ...] = RECONNECT_WAITS):
        super().__init__(waits)
        self.target, self.live, self.name, self.container = target, live, target, None
        self._open()

    def _open(self) -> None:
        import av

        options = {"rtsp_transport": "tcp"} if self.target.startswith(("rtsp://", "rtsps://")) else {}
        try:
            self.container = av.open(self.target, options=options,
                                     timeout=(OPEN_TIMEOUT_S, OPEN_TIMEOUT_S) if self.live else None)
        except (av.error.FFmpegError, UnicodeDecodeError, OSError) as e:
            reason = getattr(e, "strerror", None) or e.__class__.__name__
            raise SfedgeError(f"cannot open source {self.target} ({reason})") from None
        if not self.container.streams.video:
            self._close()
            raise SfedgeError(f"no video stream in {self.target}")

    def _read(self):
        import av

        if self.container is None:
            return
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        first, n = None, 0
        rate = float(stream.average_rate or 25)
        try:
            for frame in self.container.decode(stream):
                t = frame.time if frame.time is not None else n / rate
                first = t if first is None else first
                n += 1
                yield t - first, frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise SfedgeError(f"{self.target}: {e}") from None

    def _close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


def open_source(src: str, *, capture: Callable | None = None, waits: tuple[float, ...] = RECONNECT_WAITS) -> Source:
    """A camera index, a stream URL or a video file -> an opened Source (SfedgeError if it cannot open)."""
    src = str(src).strip()
    if src.isdigit():
        return CameraSource(int(src), capture=capture, waits=waits)
    scheme = src.split("://", 1)[0].lower() if "://" in src else ""
    if scheme:
        if scheme not in STREAM_SCHEMES:
            raise SfedgeError(f"unsupported source URL scheme {scheme!r} (use one of {', '.join(STREAM_SCHEMES)})")
        return AvSource(src, live=scheme != "file", waits=waits)
    path = Path(src)
    if not path.exists():
        raise SfedgeError(f"source not found: {src} (a camera index, a stream URL or a video file)")
    if path.is_dir():
        raise SfedgeError(f"source {src} is a directory; watch reads a camera, a stream or a video file")
    return AvSource(str(path), live=False, waits=waits)
