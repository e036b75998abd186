"""Enrollment, avatar packs, the per-frame reenactor and the offline run_stream path (default zoo)."""
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
from engines.core.photo import read_photo
from streamer.avatar.enroll import Enroller, load_or_enroll
from streamer.avatar.pack import AvatarPack
from tests.media import short_clip

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "assets" / "astronaut.png"


@pytest.fixture(scope="module")
def pack(astronaut_pack):
    return astronaut_pack


def test_pack_contents_and_round_trip(pack):
    p = AvatarPack.load(pack)
    assert p.zoo == "default" and tuple(p.latent.shape) == (1, 100)
    assert set(k.split(".")[1] for k in p.tuned) == {"3", "4", "6", "7", "9", "10", "12"}
    assert p.crop.shape == (64, 64, 3) and p.display.shape == (256, 256, 3)
    assert len(p.p) == 13 and p.meta["box"][2] > 0
    q = p.meta["quality"]
    # tuning must improve the reconstruction (identity up, pixel error down)
    assert q["tuned"]["sface_cosine"] > q["inverted"]["sface_cosine"]
    assert q["tuned"]["pixel_mae"] < q["inverted"]["pixel_mae"]
    assert q["tuned"]["sface_cosine"] > 0.6
    # the tuned generator reproduces the crop (what the quality numbers claim)
    from engines.models.dcgan import DCGAN
    g = p.generator(DCGAN.from_checkpoint())
    with torch.no_grad():
        img = ((g.synthesize(p.latent)[0].clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()
    assert np.abs(img - p.crop.astype(np.float32)).mean() == pytest.approx(q["tuned"]["pixel_mae"], abs=0.6)


def test_corrupt_or_foreign_pack_is_a_user_error(pack, tmp_path):
    bad = tmp_path / "bad.avatar"
    bad.write_bytes(pack.read_bytes()[:300])
    with pytest.raises(UserError, match="not a readable avatar pack"):
        AvatarPack.load(bad)
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.avatar"))
    with pytest.raises(UserError, match="not an avatar pack"):
        AvatarPack.load(tmp_path / "other.avatar")


def test_photo_errors(tmp_path, engine):
    with pytest.raises(UserError, match="photo not found"):
        read_photo(tmp_path / "nope.jpg")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UserError, match="not an image|corrupt"):
        read_photo(junk)
    blank = np.full((300, 300, 3), 200, np.uint8)
    with pytest.raises(UserError, match="no face found"):
        Enroller(engine.zoo, progress=False, log=lambda m: None).align(blank, "blank.png")


def test_two_faces_use_the_largest_and_say_so(engine, monkeypatch):
    """... searching the photo for faces once (a photo widened to mend a cut face is searched again)."""
    from engines.method.net3d import MediaPipeNet3D
    face = np.asarray(Image.open(ASTRONAUT).convert("RGB"))[20:300, 100:380]
    canvas = np.full((300, 600, 3), 90, np.uint8)
    canvas[10:290, 0:280] = face                                             # the larger face, left
    canvas[50:250, 320:520] = np.asarray(Image.fromarray(face).resize((200, 200)))
    said, searched = [], []
    find_all = MediaPipeNet3D.find_all
    monkeypatch.setattr(MediaPipeNet3D, "find_all", lambda self, img: searched.append(img.shape) or find_all(self, img))
    box, *_ = Enroller(engine.zoo, progress=False, log=said.append).align(canvas, "two.png")
    assert any("2 faces" in s and "largest" in s for s in said)
    assert box[0] < 280  # centred on the big face on the left
    assert searched == [canvas.shape]


def test_photo_is_enrolled_once_and_cached(engine, tmp_path, monkeypatch, pack):
    monkeypatch.setenv("FACEREENACT_CACHE", str(tmp_path / "cache"))
    import streamer.avatar.enroll as enroll
    calls = []
    real = enroll.Enroller.enroll

    def quick(self, photo, name="photo", tune=True, invert_steps=None, tune_steps=None, tune_directions=0):
        calls.append(name)
        return real(self, photo, name, False, 5, None, tune_directions)   # quick: no tuning
    monkeypatch.setattr(enroll.Enroller, "enroll", quick)
    a = load_or_enroll(ASTRONAUT, engine.zoo, progress=False, log=lambda m: None)
    b = load_or_enroll(ASTRONAUT, engine.zoo, progress=False, log=lambda m: None)
    assert calls == ["astronaut.png"] and torch.equal(a.latent, b.latent)


def test_the_correction_reads_renders_in_the_frame_the_session_publishes(engine, pack):
    """The correction's second reading of each render (Correction.measure's publish) is the frame this
    session publishes: the render at rest framed there is the avatar's own published frame, byte for byte."""
    r = engine.make_reenactor(pack, feedback_every=0)
    renders = r._render_requests(torch.zeros(2, r.A.k))
    shown = r._published(renders)
    assert shown.shape == (2, *r.avatar_img.shape) and np.array_equal(shown[0], r.avatar_img)
    r.close()


def test_first_frame_reproduces_the_avatar_and_no_face_eases_back(engine, pack):
    # open loop: with feedback the integral learnt while the head was turned stays after a reset
    r = engine.make_reenactor(pack, hold_s=0.0, ease_s=0.05, feedback_every=0)
    drv = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    out = r.process(drv)
    assert out.face_found and set(out.stage_ms) == {"face", "pose", "latent", "image"}
    # relative motion: the driver's first frame is its neutral reference, so dp = 0 and the shift
    # A(0) - A(0) vanishes: the output is the avatar's own reconstruction, exactly
    assert np.array_equal(out.image, r.avatar_img)
    rot = np.asarray(Image.fromarray(drv).rotate(12, resample=Image.BICUBIC))
    for _ in range(3):
        moved = r.process(rot)
    assert np.abs(moved.image.astype(int) - r.avatar_img).mean() > 2
    dp_before = r.dp.abs().sum().item()
    blank = np.zeros_like(drv)
    for _ in range(40):
        o = r.process(blank)
        time.sleep(0.005)
    assert not o.face_found and r.no_face >= 40
    assert r.dp.abs().sum().item() < 0.2 * dp_before   # eased back toward the avatar's neutral pose
    r.reset_reference()
    assert np.array_equal(r.process(rot).image, r.avatar_img)  # new reference: dp = 0 again
    r.close()


def test_a_packs_next_sessions_share_its_correction(pack, monkeypatch, tmp_path):
    """The response correction is measured by a pack's first session and shared by the next ones (no
    ~12 s of renders read by MediaPipe while other calls run); it is the same as a fresh measurement and
    is measured apart for another reach (feedback on: no reach limit, and the Net3D view read alone, as
    the feedback's yaw loop was measured). So is its roll at rest."""
    from engines.method.correction import Correction
    from streamer.reenact.engine import AvatarReenactor, Engine
    from streamer.reenact.motion import ROLL_READ
    monkeypatch.setenv("FACEREENACT_CACHE", str(tmp_path))   # measured here, not read from an earlier run
    engine = Engine("default", log=lambda m: None, progress=False)
    a, b = engine.make_reenactor(pack), engine.make_reenactor(pack)
    assert a.correction is not None and a.correction.reach is not None and b.correction is a.correction
    shown_to_viewer = a._published

    def not_for_the_feedback(self, renders):
        raise AssertionError("the feedback's correction read a published frame")
    monkeypatch.setattr(AvatarReenactor, "_published", not_for_the_feedback)
    fb = engine.make_reenactor(pack, feedback_every=3)
    assert fb.correction is not a.correction and fb.correction.reach is None
    fresh = Correction.measure(a.A, a._render_requests, spread=a.correction.reach[0].tolist(),
                               image_reader=engine.image_reader, publish=shown_to_viewer)
    assert torch.equal(fresh.gates, a.correction.gates) and torch.allclose(fresh.drift, a.correction.drift)
    assert fresh.curves.keys() == a.correction.curves.keys()
    assert all(np.allclose(fresh.curves[i][1], a.correction.curves[i][1]) for i in fresh.curves)
    # and so is the roll the published avatar shows at rest, which bounds the driver's roll
    shown = a._shown_roll(engine.image_reader)
    assert shown is not None and b.motion.roll_limits == fb.motion.roll_limits == a.motion.roll_limits
    assert a.motion.roll_limits == (min(0.0, -ROLL_READ - shown), max(0.0, ROLL_READ - shown))
    assert len(engine.per_pack) == 3   # two corrections, one roll at rest
    for r in (a, b, fb):
        r.close()


def test_per_pack_measurements_are_made_once_and_forgotten_with_their_pack():
    import gc

    from streamer.reenact.engine import PerPack

    class Pack:
        pass
    memo, made = PerPack(), []

    def make(tag):
        return lambda: made.append(tag) or tag
    one, two = Pack(), Pack()
    assert memo.get(one, ("c", 1), make("one")) == "one" and memo.get(one, ("c", 1), make("again")) == "one"
    assert memo.get(one, ("c", 2), make("one-2")) == "one-2" and memo.get(two, ("c", 1), make("two")) == "two"
    assert made == ["one", "one-2", "two"] and len(memo) == 3
    del one
    gc.collect()
    assert len(memo) == 1
    three = Pack()            # may reuse the dead pack's id: must not get its measurement
    assert memo.get(three, ("c", 1), make("three")) == "three" and len(memo) == 2


def test_driver_head_turn_turns_the_avatar(engine, pack):
    """Frame 0 of the bundled clip is the reference; frame 350 has the driver's head turned ~15 deg
    (read by the MediaPipe runtime on the driver). The avatar's yaw, read the same way on the output,
    must turn the same way by a clear margin, and stay put when the driver returns."""
    from calibration.evaluation.motion import output_view
    from engines.core.views import to_uint8
    from engines.method.net3d import MediaPipeNet3D
    with av.open(str(ROOT / "assets" / "pexels_woman.mp4")) as c:
        frames = {i: f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(video=0)) if i in (0, 350)}
    r = engine.make_reenactor(pack, smooth=False, feedback_every=0)   # A itself (feedback: next test)
    with MediaPipeNet3D("image") as reader:
        turn = reader.read(frames[350]).p[0] - reader.read(frames[0]).p[0]
        yaws = []
        for i in (0, 350, 0):
            for _ in range(6):  # hold each pose a few frames (MediaPipe's tracker smooths over time)
                out = r.process(frames[i])
                time.sleep(0.02)
            yaws.append(reader.read(to_uint8(output_view(out.image, 64))[0]).p[0])
    r.close()
    assert turn > 8
    assert yaws[1] - yaws[0] > 0.4 * turn
    assert abs(yaws[2] - yaws[0]) < 1.0


def test_feedback_brings_the_avatars_yaw_to_the_drivers(engine, pack):
    """A wide turn (frame 240, ~12 deg: open loop the avatar, as MediaPipe reads its 64-px render, shows
    about 8 of it), held 12 frames, open loop and with head-pose feedback (read every 3rd frame). Read
    by the MediaPipe runtime on the published frames, feedback must take at least a quarter off the
    open-loop error of the avatar's turn (or leave it within 1.5 deg), and the avatar come back when
    the driver does. (A moderate
    turn, ~8 deg, is now shown within 0.6 deg open loop: nothing left for the feedback to take off.)"""
    from calibration.evaluation.motion import output_view
    from engines.core.views import to_uint8
    from engines.method.net3d import MediaPipeNet3D
    with av.open(str(ROOT / "assets" / "pexels_woman.mp4")) as c:
        frames = {i: f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(video=0)) if i in (0, 240)}
    with MediaPipeNet3D("image") as reader:
        turn = reader.read(frames[240]).p[0] - reader.read(frames[0]).p[0]
        shown = {}
        for every in (0, 3):
            r = engine.make_reenactor(pack, smooth=False, feedback_every=every)
            yaws = []
            for k, i in enumerate((0, 240, 0)):
                for j in range(12):
                    out = r.process(frames[i], t=(k * 12 + j) / 30)
                yaws.append(reader.read(to_uint8(output_view(out.image, 64))[0]).p[0])
            assert (r.feedback is None) == (every == 0)
            if every:
                assert "feedback" in out.stage_ms and r.feedback.integral.abs().max() > 0
            r.close()
            shown[every] = yaws
    assert turn > 10
    open_err = abs(shown[0][1] - shown[0][0] - turn)
    fb_err = abs(shown[3][1] - shown[3][0] - turn)
    # a quarter of the open-loop error gone, at least -- or the turn shown within 1.5 deg, where the
    # open loop already comes close (the same photo enrolled on an AMD CPU showed 10.5 of 12.2 deg open
    # loop, 10.9 with feedback; on the Intel VM ~8); never worse
    assert fb_err < max(0.75 * open_err, 1.5) and fb_err <= open_err, (turn, shown)
    assert abs(shown[3][2] - shown[3][0]) < 1.5, shown


def test_correction_gates_senses_and_cancels_one_sided_drift():
    """The per-avatar correction in closed form: angles left linear (no curves), two expression directions. The
    first moves its parameter only upward (the - sense is gated off), the second only downward; each
    sense's head drift is cancelled by the opposite angle request."""
    from engines.method.correction import Correction
    k = 5
    drift = torch.zeros(2, 3, k - 3)
    drift[1, 0, 0] = -0.5      # + sense of expression 0 turns the head +0.5 per unit: ask -0.5
    drift[0, 1, 1] = 0.25      # - sense of expression 1 tilts it: per unit step (negative), ask +0.25
    gates = torch.tensor([[False, True], [True, False]])   # [- sense, + sense] per expression
    correct = Correction({}, drift, gates)
    out = correct(torch.tensor([1.0, 0.0, 0.0, 2.0, -4.0]))
    assert torch.allclose(out, torch.tensor([1.0 - 1.0, -1.0, 0.0, 2.0, -4.0]))
    out = correct(torch.tensor([0.0, 0.0, 0.0, -2.0, 3.0]))
    assert torch.allclose(out, torch.zeros(5))   # both requests are in senses that are off


def test_media_time_makes_file_output_independent_of_processing_speed(engine, pack):
    """With the frame's media time given, smoothing and tracking run on the clip's clock: the same
    frames give the same output whether this machine is fast or slow (here: one run stalls)."""
    with av.open(str(ROOT / "assets" / "pexels_woman.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for i, f in zip(range(12), c.decode(video=0))]
    frames = frames[:6] + [frames[-1]] * 6   # a jump, then held: the filter's lag shows in the output
    runs = []
    for stall in (0.0, 0.03):
        r = engine.make_reenactor(pack)
        outs = []
        for i, f in enumerate(frames):
            outs.append(r.process(f, i / 25).image)
            time.sleep(stall)
        r.close()
        runs.append(outs)
    assert all(np.array_equal(a, b) for a, b in zip(*runs))
    assert not np.array_equal(runs[0][6], runs[0][-1])  # the filter did smooth (the test can fail)


def test_run_stream_offline_writes_every_frame(pack, tmp_path):
    clip = short_clip(tmp_path / "short.mp4", 30)
    out = tmp_path / "sub" / "out.mp4"
    r = subprocess.run([sys.executable, "run_stream.py", "--avatar", str(pack), "--source", str(clip),
                        "--sink", str(out), "--side-by-side", "--quiet"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "30 frames (0 without a face)" in r.stderr and "fps" in r.stderr
    assert "Traceback" not in r.stderr
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 30
    assert frames[0].shape[0] == 256 and frames[0].shape[1] > 3 * 256  # driver | avatar | result


def test_run_stream_bad_avatar_is_one_line(tmp_path):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(blank)
    r = subprocess.run([sys.executable, "run_stream.py", "--avatar", str(blank), "--source",
                        str(ROOT / "assets" / "pexels_woman.mp4"), "--sink", str(tmp_path / "o.mp4")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "FACEREENACT_CACHE": str(tmp_path / "c")})
    assert r.returncode == 2
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert lines[-1].startswith("error: no face found in blank.png") and "Traceback" not in r.stderr


@pytest.mark.slow
def test_enrollment_does_not_depend_on_the_callers_thread_count(engine):
    """Enrollment runs its optimisation at a fixed torch thread count (1 unless asked), so a photo gives
    the same pack from every tool — the caller's setting is restored afterwards. (Unpinned, a caller at
    2 threads got a different pack here: latent max |diff| 0.08 after 30 steps.)"""
    photo = read_photo(ASTRONAUT)
    caller = torch.get_num_threads()
    packs = {}
    try:
        for setting, threads in ((2, 1), (1, 1)):
            torch.set_num_threads(setting)
            packs[setting, threads] = Enroller(engine.zoo, False, lambda m: None, threads=threads).enroll(
                photo, "astronaut.png", True, 20, 60)
            assert torch.get_num_threads() == setting
    finally:
        torch.set_num_threads(caller)
    same = packs[1, 1]
    assert same.meta["threads"] == 1
    assert torch.equal(packs[2, 1].latent, same.latent)
    assert all(torch.equal(packs[2, 1].tuned[k], v) for k, v in same.tuned.items())
