"""The fault and bad-input matrix (docs/faults.md): every fault ends in a clear one-line message (no
traceback), a non-zero exit where it is fatal, and no loss of output already written. Faults that the
streaming tests already prove are listed in docs/faults.md with their test, not repeated here.

The real default-zoo engine runs on a quickly enrolled astronaut (40 inversion + 60 tuning steps:
motion and identity quality do not matter for these checks)."""
from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from engines.core.errors import UserError
from tests.media import short_clip
from tests.stream_support import stop_stream

ROOT = Path(__file__).resolve().parents[1]
ASTRO = ROOT / "assets" / "astronaut.png"
CLIP = ROOT / "assets" / "pexels_woman.mp4"
QUIET = lambda m: None  # noqa: E731


# ------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("FACEREENACT_CACHE", str(d))
    yield d
    mp.undo()


@pytest.fixture(scope="module")
def engine(cache):
    from streamer.reenact.engine import Engine
    torch.set_num_threads(1)
    return Engine(progress=False, log=QUIET)


@pytest.fixture(scope="module")
def pack_path(engine, tmp_path_factory):
    from engines.core.photo import read_photo
    from streamer.avatar.enroll import Enroller
    pack = Enroller(engine.zoo, progress=False, log=QUIET).enroll(read_photo(ASTRO), ASTRO.name,
                                                                 invert_steps=40, tune_steps=60)
    path = tmp_path_factory.mktemp("pack") / "astronaut.avatar"
    pack.save(path)
    return path


def one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{text[-2000:]}"
    assert "Traceback" not in text
    return lines[0]


def error_line(text: str) -> str:
    """The one error line of a failed CLI run: the last line, the only 'error:' line, no traceback
    (progress notes such as 'avatar: enrolling ...' may come before it)."""
    assert "Traceback" not in text, text[-2000:]
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], text[-2000:]
    return errors[0]


def run_cli(module_main, argv, capsys) -> tuple[int, str]:
    """A CLI main() in this process (models already loaded): exit status and stderr."""
    try:
        code = module_main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def stream_main(argv):
    import run_stream
    return run_stream.main(argv)


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


# ------------------------------------------------------------------------------- driving-frame faults
@pytest.mark.slow
def test_driver_without_face_holds_the_pose_then_eases_to_neutral(engine, astronaut_pack):
    from streamer.avatar.pack import AvatarPack
    from streamer.reenact.engine import AvatarReenactor
    reen = AvatarReenactor(engine, AvatarPack.load(astronaut_pack), smooth=False)
    # the premise: the avatar's rest is its own pose (a quick pack's yaw can reach under ROOM_SHORT one
    # way, and Correction.room_shift then starts it turned; the product's astronaut turns ~1.6 both ways)
    assert reen.correction is not None and not reen.correction.room_shift().any()
    photo = Image.open(ASTRO).convert("RGB")
    face = np.asarray(photo)
    tilted = np.asarray(photo.rotate(15, resample=Image.BICUBIC))          # the driver tilts the head
    blank = np.tile(np.linspace(30, 220, 512, dtype=np.uint8)[None, :, None], (512, 1, 3))  # no face
    first = reen.process(face, 0.0)
    moved = reen.process(tilted, 0.1)
    assert first.face_found and moved.face_found
    assert np.array_equal(first.image, reen.avatar_img)    # relative: the first face is the neutral
    assert np.abs(moved.image.astype(int) - reen.avatar_img).mean() > 2   # the driver moved the avatar
    held = [reen.process(blank, 0.2 + 0.1 * k) for k in range(8)]            # within hold_s = 1 s
    assert not any(o.face_found for o in held) and reen.no_face == 8
    assert all(np.array_equal(o.image, moved.image) for o in held)      # last pose held exactly
    dist = []
    for k in range(150):                                                 # past hold_s: ease back
        out = reen.process(blank, 1.3 + k / 30)
        dist.append(np.abs(out.image.astype(int) - reen.avatar_img).mean())
    # monotone up to the rounding of the 8-bit frame (a hundredth of a grey level of the mean)
    assert all(b <= a + 0.01 for a, b in zip(dist, dist[1:])), "easing must approach neutral monotonically"
    assert dist[-1] < 0.5 and out.image.shape == (256, 256, 3)          # exp(-150/15) of the shift left
    reen.close()


def two_face_frame(shared: Path | None) -> np.ndarray:
    if shared is not None:
        return np.asarray(Image.open(shared / "media" / "twofaces_obama_biden.jpg").convert("RGB"))
    a = Image.open(ASTRO).convert("RGB").crop((100, 0, 360, 280))     # faces big enough to detect
    small = a.transpose(Image.FLIP_LEFT_RIGHT).resize((156, 168))
    canvas = Image.new("RGB", (280 + small.width, 280), (40, 40, 40))
    canvas.paste(a, (0, 0))
    canvas.paste(small, (280, 56))
    return np.asarray(canvas)


def test_of_faces_about_as_large_the_most_frontal_is_enrolled():
    """Closed form: faces with at least RIVAL_AREA of the largest's area compete and the least turned
    (|yaw| + |pitch|) wins, so mirroring a group photo keeps the person; a smaller face never wins."""
    from types import SimpleNamespace

    from calibration.inversion import RIVAL_AREA, chosen_face

    def face(area, yaw, pitch):
        return SimpleNamespace(area=area, p=np.array([yaw, pitch, 0.0, 0.0]))
    turned, frontal, tiny = face(100.0, 52.0, 24.0), face(99.0, 5.0, 21.0), face(RIVAL_AREA * 100 - 1, 0.0, 0.0)
    assert chosen_face([turned, frontal, tiny]) is frontal
    mirrored = [face(f.area, -f.p[0], f.p[1]) for f in (turned, frontal, tiny)]
    assert chosen_face(mirrored) is mirrored[1]
    assert chosen_face([turned, tiny]) is turned
    assert chosen_face([frontal]) is frontal


@pytest.mark.slow
@pytest.mark.parametrize("which", ["bundled", "shared"])
def test_two_faces_drive_and_enroll_with_the_largest(which, engine, pack_path, request):
    from engines.method.net3d import MediaPipeNet3D
    from streamer.avatar.enroll import Enroller
    from streamer.avatar.pack import AvatarPack
    from streamer.reenact.engine import AvatarReenactor
    img = two_face_frame(request.getfixturevalue("shared_dir") if which == "shared" else None)
    with MediaPipeNet3D("image", num_faces=4) as r:
        faces = r.read_all(img)
    assert len(faces) == 2, "the test image must show two faces the runtime finds"
    largest = faces[0]
    reen = AvatarReenactor(engine, AvatarPack.load(pack_path))
    outs = [reen.process(img, k / 30) for k in range(5)]
    assert all(o.face_found and o.image.shape == (256, 256, 3) for o in outs)
    tracked = reen.reader.read(img, 1000)                  # the session's own tracker: the larger face
    assert np.allclose(tracked.box, largest.box, atol=8), (tracked.box, [f.box for f in faces])
    reen.close()
    notes = []
    box = Enroller(engine.zoo, progress=False, log=notes.append).align(img, "two.jpg")[0]
    assert notes == ["note: 2 faces in two.jpg; using the largest"]
    x0, y0, x1, y1 = largest.box
    assert x0 <= box[0] <= x1 and y0 - (y1 - y0) <= box[1] <= y1   # crop centred on the largest face


@pytest.mark.slow
def test_hand_over_the_face_keeps_a_face_in_the_output(engine, pack_path):
    """assets/pexels_woman.mp4 frames 64-232: her hand covers mouth, nose and eyes in turn."""
    from calibration.evaluation.motion import output_view
    from engines.core.views import to_uint8
    from engines.method.net3d import MediaPipeNet3D
    from streamer.avatar.pack import AvatarPack
    from streamer.reenact.engine import AvatarReenactor
    reen = AvatarReenactor(engine, AvatarPack.load(pack_path))
    outs = []
    with av.open(str(CLIP)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i > 232:
                break
            o = reen.process(f.to_ndarray(format="rgb24"), f.time)
            if i >= 64 and i % 4 == 0:
                outs.append(o)
    reen.close()
    assert all(o.image.shape == (256, 256, 3) and o.image.dtype == np.uint8 for o in outs)
    with MediaPipeNet3D("image") as r:
        found = [r.read(to_uint8(output_view(o.image, engine.zoo.generator.resolution))[0]) is not None
                 for o in outs]
    # the occluded driver must not push the avatar into a non-face (clamping to the calibrated range)
    assert np.mean(found) >= 0.9, f"{np.mean(found):.2f} of outputs show a face"


# ---------------------------------------------------------------------------------- avatar faults
def no_face_photo(tmp_path: Path, shared: Path | None) -> Path:
    if shared is not None:
        return shared / "media" / "noface_coffee.png"
    p = tmp_path / "plain.png"
    g = np.linspace(0, 255, 320, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(g, (240, 1))] * 3, -1)).save(p)
    return p


@pytest.mark.parametrize("which", ["bundled", "shared"])
def test_avatar_photo_without_a_face(which, engine, tmp_path, request, capsys):
    photo = no_face_photo(tmp_path, request.getfixturevalue("shared_dir") if which == "shared" else None)
    out = tmp_path / "out.mp4"
    code, err = run_cli(stream_main, ["--avatar", str(photo), "--source", str(CLIP), "--sink", str(out),
                                      "--quiet"], capsys)
    assert code == 2
    assert error_line(err) == f"error: no face found in {photo.name}; use a photo with one clearly visible face"
    assert not out.exists()                     # failed before anything was written


def corrupt_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    data = ASTRO.read_bytes()
    files = {"truncated PNG": ("half.png", data[: len(data) // 2], "corrupt or truncated image"),
             "not an image": ("notes.jpg", b"these are not pixels\n" * 50, "not an image file PIL can read"),
             "empty file": ("empty.png", b"", "not an image file PIL can read")}
    buf = io.BytesIO()
    Image.new("1", (10000, 9000)).save(buf, "PNG")       # 90 MP: a decompression bomb by size alone
    files["decompression bomb"] = ("huge.png", buf.getvalue(), "image is too large")
    out = {}
    for what, (name, blob, msg) in files.items():
        (tmp_path / name).write_bytes(blob)
        out[what] = (tmp_path / name, msg)
    return out


def test_corrupt_avatar_images_are_one_line_errors(engine, tmp_path, capsys):
    from streamer.avatar import enroll
    for what, (path, msg) in corrupt_files(tmp_path).items():
        code, err = run_cli(enroll.main, ["--avatar", str(path), "--out", str(tmp_path / "x.avatar")], capsys)
        line = error_line(err)
        assert code == 2 and line.startswith(f"error: {path}: ") and msg in line, (what, line)
    # the stream CLI says the same, before opening any output
    path, msg = corrupt_files(tmp_path)["truncated PNG"]
    code, err = run_cli(stream_main, ["--avatar", str(path), "--source", str(CLIP), "--sink",
                                      str(tmp_path / "o.mp4"), "--quiet"], capsys)
    assert code == 2 and msg in error_line(err) and not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("mode,suffix,scale", [("I;16", ".png", 257), ("I", ".tif", 257), ("F", ".tif", 1 / 255)])
def test_a_grey_photo_of_more_than_8_bits_reads_as_its_8_bit_grey(tmp_path, mode, suffix, scale):
    """A 16-bit grey PNG (a scanner's), a 32-bit integer and a 0..1 float TIFF of the astronaut's grey
    read as the 8-bit grey itself, within one level (PIL's own conversion clipped them at 255: white)."""
    from PIL import Image

    from engines.core.photo import read_photo
    grey = np.asarray(Image.open(ASTRO).convert("L"))
    deep = tmp_path / f"deep{suffix}"
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    Image.fromarray((grey.astype(np.float64) * scale).astype(dtype)).save(deep)
    assert Image.open(deep).mode == mode
    got = read_photo(deep)
    assert got.shape == (*grey.shape, 3) and np.abs(got.astype(int) - grey[..., None]).max() <= 1


@pytest.mark.slow
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_device_that_is_not_there(pack_path, tmp_path, capsys):
    """--device cuda on a CPU-only torch: one line naming the fix, before any output is opened."""
    for spec, msg in (("cuda", "sees no CUDA GPU"), ("tpu", "not a device")):
        out = tmp_path / "o.mp4"
        code, err = run_cli(stream_main, ["--avatar", str(pack_path), "--device", spec, "--source", str(CLIP),
                                          "--sink", str(out), "--quiet"], capsys)
        line = error_line(err)
        assert code == 2 and line.startswith(f"error: --device {spec}: ") and msg in line, line
        assert not out.exists()


# ------------------------------------------------------------------------------ checkpoint faults
def truncated(src: Path, dst: Path, frac: float = 0.6) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * frac)])
    return dst


@pytest.mark.slow
def test_truncated_or_wrong_directions_file(engine, pack_path, tmp_path, capsys):
    from engines.method.default_zoo import default_directions_path
    bad = {"truncated": truncated(default_directions_path(), tmp_path / "A_cut.safetensors"),
           "a photo renamed": tmp_path / "photo.safetensors"}
    bad["a photo renamed"].write_bytes(ASTRO.read_bytes())
    for what, path in bad.items():
        code, err = run_cli(stream_main, ["--avatar", str(pack_path), "--directions", str(path), "--source",
                                          str(CLIP), "--sink", str(tmp_path / "o.mp4"), "--quiet"], capsys)
        line = error_line(err)
        assert code == 2 and line.startswith(f"error: {path}: directions file is corrupt"), (what, line)


@pytest.mark.slow
def test_truncated_or_foreign_avatar_pack(engine, pack_path, tmp_path, capsys):
    from streamer.avatar.pack import AvatarPack
    cut = truncated(pack_path, tmp_path / "cut.avatar")
    code, err = run_cli(stream_main, ["--avatar", str(cut), "--source", str(CLIP), "--sink",
                                      str(tmp_path / "o.mp4"), "--quiet"], capsys)
    assert code == 2 and error_line(err).startswith(f"error: {cut}: not a readable avatar pack")
    pack = AvatarPack.load(pack_path)
    other = AvatarPack("vox256", pack.latent, {}, pack.crop, pack.display, dict(pack.meta))
    other.save(tmp_path / "vox.avatar")
    with pytest.raises(UserError, match="avatar was enrolled for zoo 'vox256', not 'default'"):
        engine.make_reenactor(tmp_path / "vox.avatar")
    name = next(iter(pack.tuned))
    wrong = AvatarPack("default", pack.latent, {name: torch.zeros(3)}, pack.crop, pack.display, dict(pack.meta))
    wrong.save(tmp_path / "wrong.avatar")
    with pytest.raises(UserError, match=f"avatar pack: '{name}' has shape \\(3,\\), generator expects"):
        engine.make_reenactor(tmp_path / "wrong.avatar")


@pytest.mark.slow
def test_damaged_cached_enrollment_is_rebuilt(engine, pack_path, cache, monkeypatch, tmp_path):
    import streamer.avatar.enroll as enroll
    from streamer.avatar.pack import AvatarPack
    photo = tmp_path / "me.png"
    photo.write_bytes(ASTRO.read_bytes())
    calls = []

    class StubEnroller:             # enrollment itself is tested elsewhere; here only the cache matters
        def __init__(self, *a, **k):
            pass

        def enroll(self, *a, **k):
            calls.append(1)
            return AvatarPack.load(pack_path)

    monkeypatch.setattr(enroll, "Enroller", StubEnroller)
    enroll.load_or_enroll(photo, engine.zoo, False, QUIET)
    cached = list((cache / "avatars").glob(f"{enroll.sha256_file(photo)[:24]}-*.avatar"))
    assert len(calls) == 1 and len(cached) == 1
    truncated(cached[0], cached[0], 0.5)                # a crash while the cache was written elsewhere
    pack = enroll.load_or_enroll(photo, engine.zoo, False, QUIET)
    assert len(calls) == 2 and pack.zoo == "default" and AvatarPack.load(cached[0]).zoo == "default"


# ----------------------------------------------------------------------- sources that fail or lie
def test_driving_file_that_is_not_a_video_or_is_truncated(tmp_path, capsys):
    from streamer.live import run_live
    from streamer.testing.fakes import make_fake_reenactor
    from tests.test_stream_live import args_of
    text = tmp_path / "clip.mp4"
    text.write_text("not a video\n")
    cut = truncated(short_clip(tmp_path / "full.mp4", 12, size=(320, 180)), tmp_path / "cut.mp4", 0.5)   # moov atom lost
    for src in (text, cut):
        code = run_live(args_of("--source", str(src), "--sink", str(tmp_path / "o.mp4")), make_fake_reenactor)
        line = one_line(capsys.readouterr().err)
        assert code == 2 and line.startswith(f"error: cannot open file {src}"), line


def audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(4):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, i * 1024
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def clip_readers():
    """Every tool that reads a whole clip, each through engines.core.frames."""
    from types import SimpleNamespace

    from calibration.evaluation.motion import clip_frames
    from calibration.mixed import real_frames
    from engines.core.frames import clip_frame
    from streamer.bench.sessions import rgb_frames
    from streamer.testing.rtc_client import clip_frames as camera_frames
    return {"motion --clips": lambda p: clip_frames(str(p), SimpleNamespace(net3d=None)),
            "motion --avatars CLIP@N": lambda p: clip_frame(p, 0, "--avatars "),
            "train --mixed": lambda p: real_frames(p, 4),
            "bench --source": lambda p: rgb_frames(p, None),
            "test camera": lambda p: camera_frames(p, 4)}


@pytest.mark.parametrize("tool", list(clip_readers()))
def test_every_clip_reader_says_one_line_for_a_file_that_is_not_a_video(tmp_path, tool):
    """A text file, an audio-only file and a clip whose index was lost: a UserError naming the file
    (main_guard prints it as one line, exit 2), not an IndexError or an av traceback."""
    read = clip_readers()[tool]
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    cut = truncated(short_clip(tmp_path / "full.mp4", 12, size=(320, 180)), tmp_path / "cut.mp4", 0.5)
    for path, says in ((text, "not a video file"), (audio_only(tmp_path / "voice.mp4"), "no video stream"),
                       (cut, "not a video file")):
        with pytest.raises(UserError, match=f"{path}: {says}"):
            read(path)
    assert len(read(tmp_path / "full.mp4")) >= 1


class FailingSource:
    """Delivers `good` frames of the clip, then raises like a camera unplugged / a disk read error."""

    def __init__(self, spec, good: int):
        from streamer.stream.sources import AVSource
        self._src, self.good = AVSource(spec), good
        self.fps, self.rate = self._src.fps, self._src.rate

    def read(self):
        if self.good == 0:
            raise OSError("Input/output error")
        self.good -= 1
        return self._src.read()

    def close(self):
        self._src.close()


def test_offline_source_failure_keeps_what_was_written(tmp_path, monkeypatch):
    import streamer.live as live
    from streamer.testing.fakes import FakeReenactor, expected_output
    monkeypatch.setattr(live, "AVSource", lambda spec: FailingSource(spec, good=20))
    out = tmp_path / "out.mp4"
    with pytest.raises(UserError) as e:
        live.run_offline(CLIP, out, FakeReenactor())
    assert one_line(str(e.value)).startswith(f"reading {CLIP} failed: lost (OSError: Input/output error)")
    got = decode(out)
    assert len(got) == 20                                # every frame before the failure, playable
    with av.open(str(CLIP)) as c:
        src = [f.to_ndarray(format="rgb24") for _, f in zip(range(20), c.decode(video=0))]
    ref = expected_output(src[19], (255, 0, 255)).astype(float)
    # the last frame is frame 19's output (H.264 crf 20: > 30 dB; a neighbouring frame scores lower)
    assert 10 * np.log10(255 ** 2 / np.mean((ref - got[19]) ** 2)) > 30


def test_offline_engine_failure_keeps_what_was_written(tmp_path):
    from streamer.live import run_offline
    from streamer.testing.fakes import FakeReenactor
    out = tmp_path / "out.mp4"
    with pytest.raises(UserError, match="reenactor error: RuntimeError: fake failure on frame 30 .at frame 29."):
        run_offline(CLIP, out, FakeReenactor(fail_every=30))
    assert len(decode(out)) == 29


# ---------------------------------------------------------------------------------- sink faults
class BrokenSink:
    """A sink whose device/disk fails after `good` frames."""

    def __init__(self, name: str, good: int):
        self.name, self.good, self.frames, self.closed = name, good, 0, False

    def write(self, item):
        if self.frames >= self.good:
            raise OSError(28, "No space left on device")
        self.frames += 1

    def close(self):
        self.closed = True


def test_offline_sink_failure_stops_early_with_one_line(tmp_path, monkeypatch):
    import streamer.live as live
    from streamer.stream.sinks import FileSink
    from streamer.testing.fakes import FakeReenactor
    write = FileSink.write
    calls = {"n": 0}

    def failing_write(self, item):
        calls["n"] += 1
        if calls["n"] > 15:
            raise OSError(28, "No space left on device")
        write(self, item)
    monkeypatch.setattr(FileSink, "write", failing_write)
    out = tmp_path / "out.mp4"
    reen = FakeReenactor()
    with pytest.raises(UserError) as e:
        live.run_offline(CLIP, out, reen)
    assert one_line(str(e.value)) == f"writing {out} failed: OSError: [Errno 28] No space left on device"
    assert reen.calls < 100                   # stopped early (while the file closes), not after all 472
    assert len(decode(out)) == 15             # the frames written before the failure stay playable


def test_live_sink_failure_is_reported_and_the_others_go_on(monkeypatch, capsys):
    import streamer.live as live
    from streamer.stream.sinks import NullSink
    from streamer.testing.fakes import make_fake_reenactor
    from tests.test_stream_live import args_of
    sinks = {"broken": BrokenSink("vcam", good=5), "file": NullSink("file:ok.mp4")}
    monkeypatch.setattr(live, "open_sink", lambda spec, **kw: sinks[spec])
    code = live.run_live(args_of("--source", "lavfi:testsrc2=size=160x120:rate=30", "--sink", "broken",
                                 "--sink", "file", "--duration", "1.5"), make_fake_reenactor)
    err = capsys.readouterr().err
    assert code == 0
    assert "output vcam failed: OSError: [Errno 28] No space left on device; the other outputs go on" in err
    assert sinks["broken"].closed and sinks["file"].frames > sinks["broken"].frames + 10


def test_live_run_whose_only_output_fails_exits_2(monkeypatch, capsys):
    import streamer.live as live
    from streamer.testing.fakes import make_fake_reenactor
    from tests.test_stream_live import args_of
    monkeypatch.setattr(live, "open_sink", lambda spec, **kw: BrokenSink("vcam:/dev/video10", good=3))
    t0 = time.perf_counter()
    code = live.run_live(args_of("--source", "lavfi:testsrc2=size=160x120:rate=30", "--sink", "vcam",
                                 "--duration", "30"), make_fake_reenactor)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and time.perf_counter() - t0 < 20          # stopped, did not run for 30 s
    assert err[-1] == "error: every output failed: vcam:/dev/video10: OSError: [Errno 28] No space left on device"


def test_unwritable_output_path_is_one_line(tmp_path, capsys):
    from streamer.live import run_live
    from streamer.testing.fakes import make_fake_reenactor
    from tests.test_stream_live import args_of
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = run_live(args_of("--source", "lavfi:testsrc2", "--sink", str(blocker / "out.mp4")), make_fake_reenactor)
    assert code == 2 and one_line(capsys.readouterr().err).startswith(f"error: --sink {blocker}/out.mp4: cannot create folder")


def test_slow_sink_drops_frames_without_slowing_the_others():
    """An overloaded consumer (a virtual camera that stops reading) gets the newest frame when it comes
    back, never a backlog, and meanwhile the engine and the other sinks go on at full rate.

    Deterministic under any CPU load (it once failed 100 vs 101 with a timed sleep): the slow sink
    blocks on an event instead of sleeping, so it is infinitely slow for as long as the test wants, and
    the camera makes frame k+1 only once the fast sink has written frame k (lockstep), so the fast
    sink can never miss a frame for the scheduler's sake. If the slow sink held anything up, the fast
    sink would stop at frame 1 and the wait below would fail; a queued sink would resume at frame 1
    instead of the newest."""
    import threading
    from streamer.stream.pipeline import Pipeline, run_sink
    from streamer.stream.sinks import NullSink
    from streamer.stream.sources import Capture
    from streamer.testing.fakes import FakeReenactor
    from tests.test_stream_pipeline import CountingSource

    n_frames, blocked_for = 60, 30

    class LockstepSource(CountingSource):
        def __init__(self):
            super().__init__(period_s=0.0)
            self.turn = threading.Semaphore(1)

        def read(self):
            while not self.turn.acquire(timeout=0.1):
                pass
            return super().read() if self.newest + 1 < n_frames else None   # None: the camera ends

    src = LockstepSource()

    class FastSink(NullSink):
        def __init__(self):
            super().__init__("fast")
            self.indices = []

        def write(self, item):
            super().write(item)
            if item.index >= 0:           # a camera frame (not an idle status frame): next one, please
                self.indices.append(item.index)
                src.turn.release()

    class StuckSink(NullSink):
        def __init__(self):
            super().__init__("slow")
            self.indices, self.gate = [], threading.Event()

        def write(self, item):
            if item.index >= 0:
                self.indices.append(item.index)
                if len(self.indices) == 1:
                    assert self.gate.wait(120), "never released"
            super().write(item)

    async def main():
        nonlocal pipe, released_at
        pipe = Pipeline(FakeReenactor())
        slow, fast = StuckSink(), FastSink()
        chs = [pipe.subscribe("slow"), pipe.subscribe("fast")]
        tasks = [asyncio.ensure_future(pipe.run()), asyncio.ensure_future(run_sink(slow, pipe, chs[0])),
                 asyncio.ensure_future(run_sink(fast, pipe, chs[1]))]
        cap = Capture(lambda: src, label="counter")
        cap.start(asyncio.get_running_loop(), pipe.input)
        deadline = time.monotonic() + 120     # generous: only a real stall runs into it
        while not (slow.indices and len(fast.indices) >= len(slow.indices) + blocked_for):
            assert time.monotonic() < deadline, (slow.indices, fast.indices[-3:])
            await asyncio.sleep(0.01)
        assert slow.frames == 0               # still stuck in its first write
        released_at = fast.indices[-1]        # the newest frame published (or one before it)
        slow.gate.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 120)   # the camera ends: everything drains
        await stop_stream(cap, pipe, [])
        return slow, fast, chs

    pipe, released_at = None, None
    slow, fast, chs = asyncio.run(main())
    # the fast sink missed nothing
    assert fast.indices == list(range(n_frames)) and pipe.stats.processed == n_frames
    assert pipe.stats.sink_dropped.get("slow", 0) >= blocked_for - 1 and chs[0].max_depth <= 1
    # back from its stall, the slow sink got the newest frame, not the one after its first (a backlog)
    # (the wait above ends once the fast sink has written frame blocked_for, so released_at >= blocked_for;
    # the camera makes the next frame only after that write, so the newest can be released_at itself)
    first, resumed = slow.indices[0], slow.indices[1]
    assert resumed >= released_at >= blocked_for and resumed - first >= blocked_for, slow.indices


# ---------------------------------------------------------------------------------- peer faults
def test_peer_that_vanishes_without_closing_is_dropped(monkeypatch):
    """A browser whose network dies (no DTLS close, no /close): ICE consent checks fail and the server
    frees the session and its engine. Consent timing is shortened here (aioice: 6 x 5 s by default)."""
    import aiohttp
    import aioice.ice

    from streamer.testing.fakes import FakeReenactor
    from streamer.testing.rtc_client import ClientPeer, StampedCameraTrack
    from tests.stream_support import served

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 3)
    made = []

    def factory(avatar):
        made.append(FakeReenactor(avatar))
        return made[-1]

    async def main():
        frames = [np.full((120, 160, 3), v, np.uint8) for v in (60, 120, 180)]
        async with served(factory) as srv, aiohttp.ClientSession() as http:
            peer = ClientPeer(srv.url, http, send=StampedCameraTrack(frames))
            await peer.connect()
            await peer.wait_frames(5)
            assert len(srv.peers.sessions) == 1
            # the network goes away: every datagram of the client is dropped, in and out
            conn = peer.pc.getTransceivers()[0].sender.transport.transport._connection
            for proto in conn._protocols:
                proto.transport.sendto = lambda *a, **k: None
                proto.datagram_received = lambda *a, **k: None
            peer.send.stop()
            t0 = time.perf_counter()
            while srv.peers.sessions and time.perf_counter() - t0 < 20:
                await asyncio.sleep(0.05)
            left = len(srv.peers.sessions)
            await peer.close(tell_server=False)
            return left

    assert asyncio.run(main()) == 0 and len(made) == 1


# --------------------------------------------------------------------- interrupting a recording
@pytest.mark.slow
def test_sigterm_during_a_live_recording_leaves_a_playable_file(pack_path, cache, tmp_path):
    out = tmp_path / "rec.mp4"
    env = dict(os.environ, FACEREENACT_CACHE=str(cache), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_stream.py"), "--avatar", str(pack_path), "--source",
                             "lavfi:testsrc2=size=320x240:rate=15", "--sink", str(out), "--quiet"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in proc.stderr:            # the status line (every 5 s): frames are being recorded
            seen.append(line)
            if "fps |" in line or len(seen) > 50:
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        err = "".join(seen) + err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    frames = decode(out)
    assert len(frames) >= 15 and frames[0].shape == (256, 256, 3)


# ------------------------------------------------------------- damaged packs and unusable caches
def _bad_packs(pack_path: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """Packs that open but must not stream: (file, what the error line says)."""
    from streamer.avatar.pack import AvatarPack
    good = AvatarPack.load(pack_path)
    name = next(iter(good.tuned))
    k = len(good.meta["p"])
    cases = {
        "NaN latent": (dict(latent=good.latent * float("nan")), "NaN or infinite"),
        "infinite tuned weight": (dict(tuned={**good.tuned, name: good.tuned[name] * float("inf")}),
                                  "NaN or infinite"),
        "p not numeric": (dict(meta={**good.meta, "p": ["a"] * k}), "expected a list of finite numbers"),
        "p holds null": (dict(meta={**good.meta, "p": [None] * k}), "expected a list of finite numbers"),
        "p too short": (dict(meta={**good.meta, "p": good.meta["p"][:3]}), "pose 'p' has 3 values"),
        "latent of another shape": (dict(latent=good.latent[:, :50]), "latent has shape (1, 50)"),
        "crop not uint8": (dict(crop=good.crop.astype(np.float32)), "'crop' is not an RGB image"),
    }
    out = {}
    for i, (what, (change, msg)) in enumerate(cases.items()):
        fields = dict(zoo=good.zoo, latent=good.latent, tuned=good.tuned, crop=good.crop, display=good.display,
                      meta=dict(good.meta))
        fields.update(change)
        path = folder / f"bad{i}.avatar"
        AvatarPack(**fields).save(path)
        out[what] = (path, msg)
    return out


@pytest.mark.slow
def test_avatar_pack_with_bad_contents_is_refused_with_one_line(engine, pack_path, tmp_path, capsys):
    """A pack whose latent is NaN streamed black frames with exit 0; one whose p is not numeric gave a
    traceback. Any pack whose contents cannot drive the zoo is one error line naming the file."""
    bad = _bad_packs(pack_path, tmp_path)
    clip = short_clip(tmp_path / "clip.mp4", 6, size=(320, 180))
    for what in ("NaN latent", "p not numeric"):                  # the CLI, end to end
        path, msg = bad[what]
        out = tmp_path / "o.mp4"
        code, err = run_cli(stream_main, ["--avatar", str(path), "--source", str(clip), "--sink", str(out),
                                          "--quiet"], capsys)
        line = error_line(err)
        assert code == 2 and line.startswith(f"error: {path}: ") and msg in line, (what, line)
        assert not out.exists()
    for what, (path, msg) in bad.items():                         # every kind, through the engine
        with pytest.raises(UserError) as e:
            engine.make_reenactor(path)
        assert one_line(str(e.value)).startswith(f"{path}: ") and msg in str(e.value), (what, str(e.value))


def _stub_enroller(monkeypatch, pack_path, log: list):
    """Enrollment itself is tested elsewhere; here only what happens around it. Records when it ran
    (as the position in `log`)."""
    import streamer.avatar.enroll as enroll
    from streamer.avatar.pack import AvatarPack
    calls = []

    class StubEnroller:
        def __init__(self, *a, **k):
            pass

        def enroll(self, *a, **k):
            calls.append(len(log))
            return AvatarPack.load(pack_path)

    monkeypatch.setattr(enroll, "Enroller", StubEnroller)
    return calls


@pytest.mark.slow
def test_cached_enrollment_that_opens_but_does_not_fit_is_rebuilt(engine, pack_path, monkeypatch, tmp_path):
    import streamer.avatar.enroll as enroll
    from streamer.avatar.pack import AvatarPack
    monkeypatch.setenv("FACEREENACT_CACHE", str(tmp_path / "cache"))
    photo = tmp_path / "me.png"
    photo.write_bytes(ASTRO.read_bytes())
    log: list[str] = []
    calls = _stub_enroller(monkeypatch, pack_path, log)
    enroll.load_or_enroll(photo, engine.zoo, False, log.append)
    (cached,) = (tmp_path / "cache" / "avatars").glob("*.avatar")
    good = AvatarPack.load(cached)
    damaged = {"another zoo": AvatarPack("vox256", good.latent, {}, good.crop, good.display, dict(good.meta)),
               "wrong latent shape": AvatarPack("default", good.latent[:, :10], good.tuned, good.crop, good.display,
                                                dict(good.meta)),
               "NaN latent": AvatarPack("default", good.latent * float("nan"), good.tuned, good.crop, good.display,
                                        dict(good.meta))}
    for what, pack in damaged.items():
        pack.save(cached)
        log.clear()
        n = len(calls)
        got = enroll.load_or_enroll(photo, engine.zoo, False, log.append)
        assert len(calls) == n + 1, what                            # enrolled again
        assert any("damaged" in m and str(cached) in m for m in log), (what, log)
        assert got.zoo == "default" and AvatarPack.load(cached).latent.shape == good.latent.shape, what


@pytest.mark.slow
@pytest.mark.parametrize("how", ["cache root under a regular file", "cache entry is a folder"])
def test_unusable_avatar_cache_is_said_before_enrolling_and_the_run_goes_on(how, engine, pack_path, monkeypatch,
                                                                            tmp_path):
    import streamer.avatar.enroll as enroll
    photo = tmp_path / "me.png"
    photo.write_bytes(ASTRO.read_bytes())
    log: list[str] = []
    calls = _stub_enroller(monkeypatch, pack_path, log)
    if how == "cache root under a regular file":
        (tmp_path / "file").write_text("x")
        monkeypatch.setenv("FACEREENACT_CACHE", str(tmp_path / "file" / "cache"))
    else:
        monkeypatch.setenv("FACEREENACT_CACHE", str(tmp_path / "cache"))
        enroll.load_or_enroll(photo, engine.zoo, False, QUIET)     # where the entry goes...
        (cached,) = (tmp_path / "cache" / "avatars").glob("*.avatar")
        cached.unlink()
        cached.mkdir()                                            # ...is a folder now
        calls.clear()
    pack = enroll.load_or_enroll(photo, engine.zoo, False, log.append)
    assert pack.zoo == "default" and len(calls) == 1              # the enrollment is used, not lost
    notes = [m for m in log if "without caching" in m]
    assert len(notes) == 1 and log.index(notes[0]) < calls[0], log       # said before enrolling started


@pytest.mark.slow
def test_packs_enrolled_from_uploads_are_deleted_at_exit(engine, pack_path, monkeypatch, tmp_path):
    import aiohttp

    import streamer.avatar.enroll as enroll
    from streamer.stream.controls import Controller
    from streamer.stream.pipeline import Pipeline
    from streamer.testing.fakes import FakeReenactor
    from tests.stream_support import png_bytes, served
    user_cache = tmp_path / "user-cache"
    monkeypatch.setenv("FACEREENACT_CACHE", str(user_cache))
    _stub_enroller(monkeypatch, pack_path, [])

    def factory(avatar):
        if avatar is not None:
            enroll.load_or_enroll(avatar, engine.zoo, False, QUIET)
        return FakeReenactor(avatar)

    async def main():
        pipe = Pipeline(FakeReenactor())
        async with served(factory, controller=Controller(pipe, factory)) as srv, aiohttp.ClientSession() as http:
            async with http.post(srv.url + "/avatar", data=png_bytes(3), headers={"Content-Type": "image/png"}) as r:
                aid = (await r.json())["avatar"]
            async with http.post(srv.url + "/control", json={"action": "avatar", "avatar": aid}) as r:
                assert r.status == 200, await r.text()
            folder = srv.avatars.dir
            during = sorted(p.name for p in folder.rglob("*.avatar"))
        pipe.close()
        return folder, during

    folder, during = asyncio.run(main())
    assert len(during) == 1                                         # the upload's enrollment was cached...
    assert not list(user_cache.rglob("*.avatar"))                   # ...not in the user's cache
    assert not folder.exists()                                      # and is gone with the server


# ------------------------------------------------------------------------------ bad output paths
@pytest.mark.parametrize("kind", ["a folder", "a link to a folder", "a dangling link into a missing folder",
                                  "a FIFO", "a read-only folder"])
@pytest.mark.parametrize("mode", ["offline", "live"])
def test_bad_output_paths_are_one_line_before_models_load(kind, mode, tmp_path, capsys):
    from streamer.live import run_live
    from tests.test_stream_live import args_of
    out = tmp_path / "out.mp4"
    if kind == "a folder":
        out.mkdir()
    elif kind == "a link to a folder":
        (tmp_path / "d").mkdir()
        out.symlink_to(tmp_path / "d")
    elif kind == "a dangling link into a missing folder":
        out.symlink_to(tmp_path / "missing" / "x.mp4")
    elif kind == "a FIFO":
        os.mkfifo(out)
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "ro").mkdir(mode=0o555)
        out = tmp_path / "ro" / "out.mp4"
    source = str(short_clip(tmp_path / "clip.mp4", 6, size=(160, 96))) if mode == "offline" \
        else "lavfi:testsrc2=size=160x96:rate=15"
    built = []
    code = run_live(args_of("--source", source, "--sink", str(out), "--duration", "2"), lambda a: built.append(a))
    line = one_line(capsys.readouterr().err)
    assert code == 2 and line.startswith(f"error: --sink {out}: "), line
    assert not built                                               # before any model loads


def test_sink_linked_to_dev_full_is_one_line_not_a_segfault(tmp_path):
    """PyAV crashed (SIGSEGV) writing the MP4 header a second time after /dev/full refused the first."""
    out = tmp_path / "out.mp4"
    out.symlink_to("/dev/full")
    code = ("import sys; from streamer.live import run_live; from streamer.testing.fakes import make_fake_reenactor; "
            "from tests.test_stream_live import args_of; "
            f"sys.exit(run_live(args_of('--source', 'lavfi:testsrc2=size=160x96:rate=15', '--sink', {str(out)!r}, "
            "'--duration', '2'), make_fake_reenactor))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert one_line(proc.stderr).startswith(f"error: --sink {out}: not a regular file")


def test_full_disk_before_the_run_is_one_line_before_models_load(tmp_path, monkeypatch, capsys):
    import errno

    import streamer.stream.sinks as sinks
    from streamer.live import run_live
    from tests.test_stream_live import args_of

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(sinks.os, "posix_fallocate", no_space, raising=False)
    out = tmp_path / "out.mp4"
    built = []
    code = run_live(args_of("--source", str(CLIP), "--sink", str(out)), lambda a: built.append(a))
    line = one_line(capsys.readouterr().err)
    assert code == 2 and line == f"error: --sink {out}: the disk is full (No space left on device)", line
    assert not built and not out.exists()


class FakeDisk:
    """A disk with `free` bytes left, at the one system call the output file writes with. The sink's
    space reserve, when released, gives its bytes back, as the file system does."""

    def __init__(self, monkeypatch, free: int):
        from streamer.stream.sinks import OutputFile
        self.free = free
        real_write, real_release = OutputFile._os_write, OutputFile._release_reserve

        def write(fd, data):
            if self.free <= 0:
                raise OSError(28, "No space left on device")
            n = min(len(data), self.free)
            self.free -= n
            return real_write(fd, data[:n])

        def release(out):
            if out._reserve is not None:
                self.free += OutputFile.RESERVE
            real_release(out)

        monkeypatch.setattr(OutputFile, "_os_write", staticmethod(write))
        monkeypatch.setattr(OutputFile, "_release_reserve", release)


def test_disk_full_offline_is_one_line_and_the_partial_file_plays(tmp_path, monkeypatch, capsys):
    from streamer.live import run_live
    from streamer.testing.fakes import make_fake_reenactor
    from tests.test_stream_live import args_of
    FakeDisk(monkeypatch, free=400_000)
    out = tmp_path / "out.mp4"
    code = run_live(args_of("--source", str(CLIP), "--sink", str(out)), make_fake_reenactor)
    line = error_line(capsys.readouterr().err)
    assert code == 2 and line == f"error: writing {out} failed: OSError: [Errno 28] No space left on device", line
    frames = decode(out)
    assert 5 < len(frames) < 472                          # what was recorded before the disk filled, playable


def test_disk_full_live_is_one_line_exit_2_and_the_partial_file_plays(tmp_path, monkeypatch, capsys):
    from streamer.live import run_live
    from streamer.testing.fakes import make_fake_reenactor
    from tests.test_stream_live import args_of
    FakeDisk(monkeypatch, free=150_000)
    out = tmp_path / "out.mp4"
    code = run_live(args_of("--source", "lavfi:testsrc2=size=320x240:rate=30", "--sink", str(out),
                            "--duration", "30"), make_fake_reenactor)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "never retrieved" not in err, err[-2000:]
    assert code == 2
    assert err.strip().splitlines()[-1] == \
        f"error: every output failed: file:out.mp4: OSError: [Errno 28] No space left on device"
    assert len(decode(out)) > 5


def test_file_sink_after_a_failed_write_never_touches_the_encoder_and_closes_once(tmp_path, monkeypatch):
    """No reserve left (the disk was full all along): the write fails, close() does not raise a second
    time or crash, and later calls are refused without reaching PyAV."""
    from streamer.stream.pipeline import Published
    from streamer.stream.sinks import FileSink
    FakeDisk(monkeypatch, free=50_000)
    sink = FileSink(tmp_path / "out.mp4", 30, live=False)
    sink.out._reserve.close()                     # no reserve to fall back on
    sink.out._reserve = None
    rng = np.random.default_rng(0)
    with pytest.raises(OSError):
        for i in range(200):
            sink.write(Published(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), float(i), i))
    sink.close()
    sink.close()
    with pytest.raises(OSError, match="closed after an earlier error"):
        sink.write(Published(np.zeros((240, 320, 3), np.uint8), 0.0, 0))


# -------------------------------------------------------------------------- command-line numbers
@pytest.mark.parametrize("argv", [("--webrtc", "--port", "70000"), ("--webrtc", "--port", "-1"),
                                  ("--source", "lavfi:testsrc2", "--fps", "nan"),
                                  ("--source", "lavfi:testsrc2", "--duration", "-5"),
                                  ("--webrtc", "--max-peers", "0")])
def test_out_of_range_numbers_on_the_command_line_are_one_line(argv, capsys):
    code, err = run_cli(stream_main, ["--avatar", str(ASTRO), *argv, "--sink", "none"], capsys)
    line = one_line(err)
    assert code == 2 and line.startswith(f"error: argument {argv[-2]}: ") and "out of range" in line, line


def test_empty_token_on_loopback_starts_the_server(monkeypatch, capsys):
    from streamer.live import run_live
    from streamer.testing.fakes import make_fake_reenactor
    from tests.test_stream_live import args_of, free_port
    assert run_live(args_of("--webrtc", "--token", "", "--port", str(free_port()), "--duration", "0.5"),
                    make_fake_reenactor) == 0
    monkeypatch.setenv("REENACT_TOKEN", "")
    assert run_live(args_of("--webrtc", "--port", str(free_port()), "--duration", "0.5"), make_fake_reenactor) == 0
    out = capsys.readouterr().out
    assert "?token=" not in out and out.count("open http://127.0.0.1:") == 2


# ------------------------------------------------------------------- a clip shorter than it says
def faststart_clip(out: Path, frames: int) -> Path:
    """An MP4 with its index (moov) before the media data, as web-ready files are written."""
    import fractions
    with av.open(str(CLIP)) as i, av.open(str(out), "w", options={"movflags": "faststart"}) as o:
        st = o.add_stream("libx264", rate=24)
        st.width, st.height, st.pix_fmt = 320, 180, "yuv420p"
        for k, f in enumerate(i.decode(video=0)):
            if k == frames:
                break
            f = f.reformat(width=320, height=180, format="yuv420p")
            f.pts, f.time_base = k, fractions.Fraction(1, 24)
            o.mux(st.encode(f))
        o.mux(st.encode())
    return out


def test_truncated_clip_whose_index_survived_says_it_ended_early(tmp_path, capsys):
    from streamer.live import run_live
    from streamer.testing.fakes import make_fake_reenactor
    from tests.test_stream_live import args_of
    full = faststart_clip(tmp_path / "full.mp4", 48)
    cut = truncated(full, tmp_path / "cut.mp4", 0.5)
    with av.open(str(cut)) as c:
        assert c.streams.video[0].frames == 48     # the index survived...
        have = 0
        try:
            for _ in c.decode(video=0):
                have += 1
        except av.error.InvalidDataError:          # (the last, cut packet)
            pass
    assert 0 < have < 48                          # ...the end of the frames did not
    assert run_live(args_of("--source", str(full), "--sink", str(tmp_path / "a.mp4")), make_fake_reenactor) == 0
    assert "ended early" not in capsys.readouterr().err          # a whole file: no warning
    code = run_live(args_of("--source", str(cut), "--sink", str(tmp_path / "b.mp4")), make_fake_reenactor)
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert warnings == [f"warning: cut.mp4 ended early: {have} of 48 frames decoded (the file is truncated or "
                        f"damaged); the output holds the {have} frames it had"], err
    assert f"{have} frames (0 without a face)" in err and "(source ended early)" in err
    assert len(decode(tmp_path / "b.mp4")) == have
