"""Sinks: virtual camera (pyvirtualcam), H.264 .mp4 file (PyAV), and a null sink.

A sink is a plain object with `name`, `write(item: Published)` (blocking; the pipeline runs it in a
thread) and `close()`. Sizes are fixed when a sink opens; later frames of another size (e.g. after
toggling side-by-side) are letterboxed into it, since neither a camera device nor an mp4 stream can
change resolution mid-stream.
"""
from __future__ import annotations

import errno
import fractions
import os
import platform
import stat
import tempfile
import time
from pathlib import Path

import numpy as np

from engines.core.errors import UserError
from streamer.stream.pipeline import Published


def letterbox(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Fit img into w x h keeping its aspect ratio, black bars around."""
    if img.shape[1] == w and img.shape[0] == h:
        return img
    from PIL import Image

    scale = min(w / img.shape[1], h / img.shape[0])
    nw, nh = max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))
    small = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    out = np.zeros((h, w, 3), np.uint8)
    y, x = (h - nh) // 2, (w - nw) // 2
    out[y:y + nh, x:x + nw] = small
    return out


VCAM_HELP = {
    "Linux": "load v4l2loopback: sudo modprobe v4l2loopback devices=1 exclusive_caps=1 "
             "card_label=Reenact (see docs/streaming.md)",
    "Windows": "install OBS Studio 28+ and click 'Start Virtual Camera' once (see docs/streaming.md)",
    "Darwin": "install OBS Studio 28+ and click 'Start Virtual Camera' once (see docs/streaming.md)",
}


class VirtualCameraSink:
    """Frames to a virtual webcam that video-call apps can pick. Opens the device at construction so
    a missing device is reported before any model is loaded."""

    def __init__(self, width: int, height: int, fps: float, *, device: str | None = None,
                 backend: str | None = None):
        import pyvirtualcam

        self.name = "vcam"
        self.width, self.height = width, height
        hint = VCAM_HELP.get(platform.system(), "see docs/streaming.md")
        if backend is None and not pyvirtualcam.camera.BACKENDS:
            raise UserError(f"no virtual camera backend on {platform.system()}; {hint}")
        if backend is not None and backend not in pyvirtualcam.camera.BACKENDS:
            raise UserError(f"unknown virtual camera backend {backend!r} "
                            f"(have: {', '.join(pyvirtualcam.camera.BACKENDS) or 'none'})")
        try:
            self.cam = pyvirtualcam.Camera(width, height, fps, fmt=pyvirtualcam.PixelFormat.RGB,
                                           device=device, backend=backend)
        except Exception as e:   # pyvirtualcam raises RuntimeError listing each backend's failure
            why = " / ".join(str(e).split("\n"))
            raise UserError(f"no virtual camera device ({why}); {hint}; "
                            f"or use --sink out.mp4 or --webrtc") from None
        self.device = self.cam.device
        self.frames = 0

    def write(self, item: Published) -> None:
        self.cam.send(np.ascontiguousarray(letterbox(item.image, self.width, self.height)))
        self.frames += 1

    def close(self) -> None:
        if self.cam is not None:
            self.cam.close()
            self.cam = None


CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}


class OutputFile:
    """The file a recording goes to, opened when the sink is made (so a folder, a device, a dangling
    link, a read-only place or a full disk is reported before any model loads) and written by PyAV
    through this object: PyAV opening it by name would only do so at the first frame, and after a
    failed write it may write the header again and crash (a segfault on /dev/full).

    Nothing is truncated until the first byte is written, so a run that fails before its first frame
    leaves an existing file as it was (and removes the file it created). A reserve of disk space (an
    unlinked, preallocated temp file) is released when the disk fills up, so the recording so far can
    still be finished with its index and plays; the sink then stops with the disk-full error."""

    RESERVE = 8 * 1024 * 1024    # the MP4 index of an hour at 30 fps is ~2 MB

    def __init__(self, path: Path):
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            try:
                fd, self.created = os.open(path, flags | os.O_EXCL, 0o666), True
            except FileExistsError:
                fd, self.created = os.open(path, flags, 0o666), False   # an old file, or a link to one
        except OSError as e:
            why = {errno.EISDIR: "it is a folder",
                   errno.ENXIO: "a device or pipe nobody reads"}.get(e.errno, e.strerror)
            raise UserError(f"--sink {path}: cannot write there ({why})") from None
        except ValueError as e:                     # a NUL byte in the name
            raise UserError(f"--sink {path!r}: not a usable file name ({e})") from None
        self.fd = fd
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):           # /dev/full, a FIFO, a terminal: no MP4 there
            os.close(fd)
            raise UserError(f"--sink {path}: not a regular file (a device or pipe); give a file name")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        self.started = False
        self.disk_full: OSError | None = None
        self._reserve = None
        self._reserve = self._make_reserve()

    def _make_reserve(self):
        try:
            reserve = tempfile.TemporaryFile(dir=self.path.parent)   # unlinked at once: never left behind
        except OSError:
            return None                           # a folder we may not create files in: no reserve
        try:
            os.posix_fallocate(reserve.fileno(), 0, self.RESERVE)
        except OSError as e:
            reserve.close()
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                self.close(remove_if_unused=True)
                raise UserError(f"--sink {self.path}: the disk is full ({e.strerror})") from None
            return None                           # no fallocate on this file system
        except AttributeError:                     # no posix_fallocate (macOS, Windows)
            reserve.close()
            return None
        return reserve

    # -- the file object PyAV writes through (write, seek, tell) ------------------------------------
    def write(self, data) -> int:
        if not self.started:                       # the first byte: now the old content goes
            os.ftruncate(self.fd, 0)
            self.started = True
        view = memoryview(data)
        while view:
            try:
                n = self._os_write(self.fd, view)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT) and self._reserve is not None:
                    self._release_reserve()        # room for what is buffered + the index
                    self.disk_full = e
                    continue
                raise
            view = view[n:]
        return len(data)

    _os_write = staticmethod(os.write)             # the one system call tests make fail

    def _release_reserve(self) -> None:
        if self._reserve is not None:
            self._reserve.close()
            self._reserve = None

    def seek(self, offset: int, whence: int = 0) -> int:
        return os.lseek(self.fd, offset, whence)

    def tell(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_CUR)

    def close(self, remove_if_unused: bool = False) -> None:
        self._release_reserve()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            if remove_if_unused and self.created and not self.started:
                try:
                    self.path.unlink()
                except OSError:
                    pass


class FileSink:
    """H.264 .mp4 via PyAV. Offline (live=False): one frame per source frame, pts = frame number, so
    the output has the source's exact rate and length. Live: pts from capture time on a 1/fps grid,
    so the file plays back in real time even when frames were dropped.

    The file is opened here (OutputFile). A failed write stops the sink: it never touches the encoder or
    the container again except to finish the file, and close() is safe to call any number of times."""

    def __init__(self, path: str | Path, fps, *, live: bool, crf: int = 20):
        self.name = f"file:{Path(path).name}"
        self.path = Path(path)
        fmt = CONTAINERS.get(self.path.suffix.lower())
        if fmt is None:
            raise UserError(f"--sink {path}: expected a .mp4 (or .mkv/.mov) file name")
        try:  # like any recorder, make the output folder (out/demo.mp4 on a fresh clone)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--sink {path}: cannot create folder {self.path.parent} ({e.strerror})") from None
        self.rate = fractions.Fraction(fps).limit_denominator(100000) if fps else None
        self.live, self.crf, self.fmt = live, crf, fmt
        self.out = OutputFile(self.path)
        self._container = None
        self._stream = None
        self._t0: float | None = None
        self._last_pts = -1
        self.frames = 0
        self.failed: Exception | None = None
        self._intact = False       # failed, but the encoder and container are fine (disk full, reserve used)
        self.closed = False

    def set_rate(self, fps) -> None:
        """The frame rate, when only known after opening (offline: the source's); before the first frame."""
        self.rate = fractions.Fraction(fps).limit_denominator(100000)

    def _open_stream(self, w: int, h: int) -> None:
        import av

        self._container = av.open(self.out, mode="w", format=self.fmt)
        s = self._container.add_stream("libx264", rate=self.rate)
        s.width, s.height = w - w % 2, h - h % 2          # yuv420p needs even sizes
        s.pix_fmt = "yuv420p"
        s.time_base = 1 / self.rate
        s.codec_context.time_base = 1 / self.rate
        s.options = {"crf": str(self.crf), "preset": "veryfast"}
        self._stream = s

    def write(self, item: Published) -> None:
        import av

        if self.failed is not None:
            raise OSError(f"{self.path} is closed after an earlier error ({self.failed})")
        if self.closed:
            raise OSError(f"{self.path} is closed")
        try:
            img = item.image
            if self._stream is None:
                self._open_stream(img.shape[1], img.shape[0])
            s = self._stream
            img = letterbox(img, s.width, s.height) if img.shape[:2] != (s.height, s.width) else img
            if self.live:
                if self._t0 is None:
                    self._t0 = item.t_capture
                pts = round((item.t_capture - self._t0) * float(self.rate))
                pts = max(pts, self._last_pts + 1)
            else:
                pts = self._last_pts + 1
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = pts, s.codec_context.time_base
            for packet in s.encode(frame):
                self._container.mux(packet)
        except Exception as e:
            self.failed = e
            raise
        self._last_pts = pts
        self.frames += 1
        if self.out.disk_full is not None:   # written into the reserve: stop here, finish the file
            self.failed, self._intact = self.out.disk_full, True
            raise self.out.disk_full

    def close(self) -> None:
        """Finish the file (flush the encoder, write the index). Idempotent; after a failed write the
        encoder is left alone and only the index is attempted. Raises OSError once if finishing fails."""
        if self.closed:
            return
        self.closed = True
        error = None
        try:
            if self._container is not None:
                if self.failed is None or self._intact:   # the encoder's last frames, unless it failed
                    for packet in self._stream.encode(None):
                        self._container.mux(packet)
                self._container.close()      # PyAV writes the trailer once, even after an error
        except Exception as e:
            error = e
        finally:
            self._container = None
            self.out.close(remove_if_unused=True)
        if error is not None and self.failed is None:
            raise OSError(f"finishing {self.path} failed: {error}") from None


class NullSink:
    """Counts frames (benchmarks, `--sink none`)."""

    def __init__(self, name: str = "none"):
        self.name = name
        self.frames = 0
        self.last: Published | None = None
        self.t_last = 0.0

    def write(self, item: Published) -> None:
        self.frames += 1
        self.last, self.t_last = item, time.perf_counter()

    def close(self) -> None:
        pass


def open_sink(spec: str, *, size: tuple[int, int], fps: float, live: bool = True,
              vcam_device: str | None = None, vcam_backend: str | None = None):
    """--sink value -> sink object: 'vcam', 'vcam:DEVICE', 'none', or a video file path."""
    if spec == "vcam" or spec.startswith("vcam:"):
        device = (spec[len("vcam:"):] or None) if spec.startswith("vcam:") else vcam_device
        sink = VirtualCameraSink(size[0], size[1], fps, device=device, backend=vcam_backend)
        if spec.startswith("vcam:"):
            sink.name = spec
        return sink
    if spec == "none":
        return NullSink()
    return FileSink(spec, fps, live=live)
