"""Sinks: virtual camera (pyvirtualcam), H.264 .mp4 file (PyAV), and a null sink.

A sink is a plain object with `name`, `write(item: Published)` (blocking; the pipeline runs it in a
thread) and `close()`. Sizes are fixed when a sink opens; later frames of another size (e.g. after
toggling side-by-side) are letterboxed into it, since neither a camera device nor an mp4 stream can
change resolution mid-stream.
"""
from __future__ import annotations

import fractions
import platform
import time
from pathlib import Path

import numpy as np

from engines.errors import UserError
from streamer.pipeline import Published


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


class FileSink:
    """H.264 .mp4 via PyAV. Offline (live=False): one frame per source frame, pts = frame number, so
    the output has the source's exact rate and length. Live: pts from capture time on a 1/fps grid,
    so the file plays back in real time even when frames were dropped."""

    def __init__(self, path: str | Path, fps, *, live: bool, crf: int = 20):
        import av

        self.name = f"file:{Path(path).name}"
        self.path = Path(path)
        if self.path.suffix.lower() not in (".mp4", ".mkv", ".mov"):
            raise UserError(f"--sink {path}: expected a .mp4 (or .mkv/.mov) file name")
        try:  # like any recorder, make the output folder (out/demo.mp4 on a fresh clone)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--sink {path}: cannot create folder {self.path.parent} ({e.strerror})") from None
        self.rate = fractions.Fraction(fps).limit_denominator(100000)
        self.live, self.crf = live, crf
        try:
            self._container = av.open(str(self.path), mode="w")
        except Exception as e:
            raise UserError(f"cannot write {path}: {e}") from None
        self._stream = None
        self._t0: float | None = None
        self._last_pts = -1
        self.frames = 0

    def _open_stream(self, w: int, h: int) -> None:
        s = self._container.add_stream("libx264", rate=self.rate)
        s.width, s.height = w - w % 2, h - h % 2          # yuv420p needs even sizes
        s.pix_fmt = "yuv420p"
        s.time_base = 1 / self.rate
        s.codec_context.time_base = 1 / self.rate
        s.options = {"crf": str(self.crf), "preset": "veryfast"}
        self._stream = s

    def write(self, item: Published) -> None:
        import av

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
        self._last_pts = pts
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        if self._stream is not None:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        self._container.close()
        self._container = None


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
