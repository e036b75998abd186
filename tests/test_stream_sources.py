"""Sources: --source parsing, lavfi/file/camera specs, looping, pacing, and reconnect with backoff."""
import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from engines.core.errors import UserError
from streamer.stream.pipeline import Pipeline, run_sink
from streamer.stream.sinks import NullSink
from streamer.stream.sources import AVSource, Capture, LoopingSource, parse_size, parse_source
from streamer.testing.fakes import FakeReenactor
from tests.stream_support import stop_stream

CLIP = Path(__file__).resolve().parents[1] / "assets" / "pexels_woman.mp4"


def test_parse_source_forms(tmp_path):
    lav = parse_source("lavfi:testsrc2", size=(320, 240), fps=15)
    assert (lav.kind, lav.fmt, lav.url, lav.pace) == ("lavfi", "lavfi", "testsrc2=size=320x240:rate=15", True)
    f = parse_source(str(CLIP))
    assert (f.kind, f.pace, f.loop) == ("file", True, True)
    off = parse_source(str(CLIP), live=False)
    assert (off.pace, off.loop) == (False, False)
    with pytest.raises(UserError, match="no such file"):
        parse_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(UserError, match="offline mode needs a video file"):
        parse_source("0", live=False)
    assert parse_size("1280x720") == (1280, 720)
    with pytest.raises(UserError):
        parse_size("big")


def test_missing_camera_is_one_clear_line():
    with pytest.raises(UserError) as e:
        parse_source("/dev/video99", size=None, fps=30, mjpeg=True)
    msg = str(e.value)
    assert "no camera at /dev/video99" in msg and "--source" in msg and "\n" not in msg


def test_webcam_spec_options(monkeypatch):
    import streamer.stream.sources as sources

    monkeypatch.setattr(sources.os.path, "exists", lambda p: True)
    monkeypatch.setattr(sources.platform, "system", lambda: "Linux")
    spec = parse_source("2", size=(1280, 720), fps=30, mjpeg=True)
    assert (spec.url, spec.fmt) == ("/dev/video2", "v4l2")
    assert spec.options == {"video_size": "1280x720", "framerate": "30", "input_format": "mjpeg"}
    assert not spec.pace     # a camera paces itself


def test_lavfi_frames_match_ffmpeg_directly():
    spec = parse_source("lavfi:testsrc2", size=(160, 120), fps=30)
    spec.pace = False
    src = AVSource(spec)
    got = [src.read() for _ in range(3)]
    src.close()
    with av.open("testsrc2=size=160x120:rate=30", format="lavfi") as c:
        ref = [f.to_ndarray(format="rgb24") for _, f in zip(range(3), c.decode(video=0))]
    assert all(g.shape == (120, 160, 3) and np.array_equal(g, r) for g, r in zip(got, ref))


def _short_clip(path, n=6, fps=24):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for k in range(n):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * k, np.uint8), format="rgb24")
            f.pts = k
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def test_file_source_loops_in_live_mode(tmp_path):
    clip = tmp_path / "six.mp4"
    _short_clip(clip)
    spec = parse_source(str(clip))
    spec.pace = False
    src = LoopingSource(spec)
    means = [src.read().mean() for _ in range(14)]
    src.close()
    assert np.allclose(means[:6], means[6:12], atol=2) and abs(means[12] - means[0]) < 2
    once = AVSource(parse_source(str(clip), live=False))
    count = 0
    while once.read() is not None:                         # offline: no loop, read() -> None at the end
        count += 1
    assert count == 6
    once.close()


def _rotated_clip(path: Path, shown: np.ndarray, rotation: int) -> None:
    """A clip whose frames are stored turned so that its display matrix (`rotation` degrees
    counter-clockwise, as a phone writes it) shows `shown`."""
    stored = np.ascontiguousarray(np.rot90(shown, -rotation // 90))
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = stored.shape[1], stored.shape[0], "yuv420p"
        s.set_display_rotation(rotation)
        for _ in range(3):
            for pkt in s.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_a_phone_clip_stored_turned_is_read_as_it_is_shown(tmp_path, rotation):
    """A phone stores a portrait clip as landscape frames with a display rotation: decoded as stored,
    the driver's face lies on its side (MediaPipe reads it less well). The file source, and the evaluation tools through the same
    helper, turn each frame as the file says: a white corner drawn at the shown frame's top left
    comes back there, in the shown frame's shape, also when resized to a shown --size."""
    from calibration.evaluation.motion import clip_frames
    shown = np.zeros((64, 96, 3), np.uint8)
    shown[:16, :16] = 255
    clip = tmp_path / "phone.mp4"
    _rotated_clip(clip, shown, rotation)
    with av.open(str(clip)) as c:
        assert next(c.decode(video=0)).rotation % 360 == rotation % 360   # the file carries the matrix
    src = AVSource(parse_source(str(clip), live=False))
    img = src.read()
    src.close()
    assert img.shape == shown.shape
    assert img[:16, :16].mean() > 200 and img[-16:, -16:].mean() < 50 and img[:16, -16:].mean() < 50
    half = AVSource(parse_source(str(clip), live=False, size=(48, 32)))
    small = half.read()
    half.close()
    assert small.shape == (32, 48, 3) and small[:8, :8].mean() > 200 and small[-8:, -8:].mean() < 50
    frames = clip_frames(str(clip), reader=SimpleNamespace(net3d=None))   # no variant: no reading
    assert frames[0][1].shape == shown.shape and frames[0][1][:16, :16].mean() > 200


class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 100.0, []

    def perf_counter(self):
        return self.now

    def sleep(self, s):
        self.sleeps.append(s)
        self.now += s


def test_paced_file_source_releases_frames_at_their_timestamps(monkeypatch):
    import streamer.stream.sources as sources

    clock = FakeClock()
    monkeypatch.setattr(sources, "time", clock)
    src = AVSource(parse_source(str(CLIP)))         # live: paced to pts, 24000/1001 fps
    for _ in range(10):
        src.read()
    src.close()
    # decoding costs no fake time, so the clock sits exactly at frame 9's timestamp
    assert clock.now - 100.0 == pytest.approx(9 * 1001 / 24000, abs=1e-9)


class FlakyCamera:
    """Opens fine; after `good` frames read() raises, like an unplugged USB camera."""

    def __init__(self, good):
        self.good = good

    def read(self):
        if self.good == 0:
            raise OSError("camera unplugged")
        self.good -= 1
        time.sleep(0.01)
        return np.full((48, 64, 3), 128, np.uint8)

    def close(self):
        pass


def test_source_failure_reconnects_with_backoff_and_sinks_keep_running():
    opens = {"n": 0}

    def opener():
        opens["n"] += 1
        if opens["n"] == 1:
            return FlakyCamera(good=5)
        if opens["n"] <= 4:                       # three failed reopen attempts
            raise OSError("No such device")
        return FlakyCamera(good=10 ** 6)

    async def main():
        cap = Capture(opener, label="camera /dev/video0", backoff_s=0.1, max_backoff_s=0.3)
        pipe = Pipeline(FakeReenactor(), idle_after_s=0.05, status_every_s=0.03,
                        status_text=cap.problem)
        sink = NullSink()
        seen = []
        write = sink.write
        sink.write = lambda item: (seen.append(item.status), write(item))
        tasks = [asyncio.ensure_future(pipe.run()),
                 asyncio.ensure_future(run_sink(sink, pipe, pipe.subscribe("none")))]
        cap.start(asyncio.get_running_loop(), pipe.input)
        t_end = time.perf_counter() + 20
        while (cap.reconnects < 1 or pipe.stats.processed < 15) and time.perf_counter() < t_end:
            await asyncio.sleep(0.02)
        await stop_stream(cap, pipe, tasks)
        return cap, pipe, seen

    cap, pipe, seen = asyncio.run(main())
    assert cap.reconnects == 1 and opens["n"] == 5
    lost = [h for h in cap.history if h.startswith("lost")]
    assert lost[0] == "lost (OSError: camera unplugged); reconnecting, attempt 1 in 0.1 s"
    # backoff doubles up to the cap; the reason shown is the latest failure
    assert [h.split("attempt ")[1] for h in lost] == ["1 in 0.1 s", "2 in 0.2 s", "3 in 0.3 s", "4 in 0.3 s"]
    assert "OSError: No such device" in lost[1]
    assert cap.history[-1] == "ok (reconnected after 4 attempt(s))" and cap.ok
    # during the outage the sink kept receiving frames: status frames saying what happens
    outage = [s for s in seen if s]
    lost_frames = [s for s in outage if s.startswith("camera /dev/video0: lost")]
    # once the camera is back, until its first frame arrives, the pipeline's own idle message may follow
    assert lost_frames and outage == lost_frames + ["waiting for video..."] * (len(outage) - len(lost_frames))
    # and real frames before and after it
    statuses = [s is None for s in seen]
    first_status = statuses.index(False)
    assert any(statuses[:first_status]) and any(statuses[first_status + len(outage):])


def test_capture_gives_up_after_max_attempts():
    def opener():
        if opener.calls:
            raise OSError("gone")
        opener.calls += 1
        return FlakyCamera(good=1)
    opener.calls = 0

    async def main():
        pipe = Pipeline(FakeReenactor())
        cap = Capture(opener, label="cam", backoff_s=0.01, max_attempts=2)
        task = asyncio.ensure_future(pipe.run())
        cap.start(asyncio.get_running_loop(), pipe.input)
        await asyncio.wait_for(task, 10)         # channel closed by the capture thread: run() ends
        pipe.close()
        return cap

    cap = asyncio.run(main())
    assert cap.status == "lost (OSError: gone); gave up after 2 attempts" and not cap.ok
