"""The motion tool (calibration.evaluation.motion) and its widened media (calibration.evaluation.media_variants)."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from calibration.evaluation.media_variants import clip_variant_frames, portrait_variant, split_name
from calibration.evaluation.motion import (Reader, Series, Widening, WiderDriver, avatar_reference, chroma_hf, judge,
                                          jaw_rest, load_portrait, main, pair_metrics, widened, yaw_centre)
from engines.core.errors import UserError
from engines.method.pose import PARAM_NAMES
from tests.media import ASTRONAUT, CLIP, short_clip

JAW = PARAM_NAMES.index("jawOpen")
YAW = PARAM_NAMES.index("yaw")


def test_portrait_variants_do_what_their_names_say():
    rgb = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    assert np.array_equal(portrait_variant(rgb, "mirror"), rgb[:, ::-1])
    grey = portrait_variant(rgb, "grey")
    assert grey.shape == rgb.shape and (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    crop = portrait_variant(rgb, "crop", face_box=(20, 10, 40, 30))
    assert crop.shape[:2] == (32, 32)       # 1.6 x the face's side, centred on it
    flat = np.full((50, 50, 3), 120, np.uint8)
    assert (portrait_variant(flat, "rot+10") == 120).all()   # filled with the edge colour, no black wedge
    assert split_name("a.png~rot-10") == ("a.png", "rot-10") and split_name("a.png") == ("a.png", None)
    grey_card = np.full((200, 300, 3), 200, np.uint8)
    dark = portrait_variant(grey_card, "dark")
    assert abs(dark.mean() - 0.5 * (200 / 255) ** 1.3 * 255) < 1   # half the light, deeper shadows: 93
    warm = portrait_variant(grey_card, "warm").reshape(-1, 3).mean(0)
    assert warm[0] > warm[1] > warm[2]                           # more red, less blue: an orange cast
    edge = np.zeros((200, 300, 3), np.uint8)
    edge[:, 150:] = 255
    low = portrait_variant(edge, "lowres")
    row = low[100, :, 0]
    assert low.shape == edge.shape and ((row > 0) & (row < 255)).sum() >= 6   # the sharp edge is now a ramp
    assert (low[100, :100] == 0).all()                           # far from the edge nothing changes
    smooth = np.repeat(np.repeat(rng_image(), 8, 0), 8, 1)             # flat colour patches
    jpeg = portrait_variant(smooth, "jpeg").astype(int)
    assert jpeg.shape == smooth.shape and 1 < np.abs(jpeg - smooth).mean() < 20   # lossy, still the photo
    grainy = portrait_variant(grey_card, "noise").astype(float) - 200
    assert abs(grainy.std() - 12) < 0.5 and abs(grainy.mean()) < 0.5            # grain of sd 12 levels
    assert np.array_equal(portrait_variant(grey_card, "noise"), portrait_variant(grey_card, "noise"))


def rng_image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 255, (25, 40, 3), dtype=np.uint8)


def test_clip_variants_mirror_and_reverse_keep_the_clock():
    frames = [(i / 10, np.full((4, 6, 3), i, np.uint8)) for i in range(5)]
    rev = list(clip_variant_frames(iter(frames), "reverse"))
    assert [t for t, _ in rev] == [t for t, _ in frames] and [int(f[0, 0, 0]) for _, f in rev] == [4, 3, 2, 1, 0]
    mirror = list(clip_variant_frames(iter(frames), "mirror"))
    assert all(np.array_equal(m, f[:, ::-1]) for (_, m), (_, f) in zip(mirror, frames))


def test_camera_clip_variants_keep_the_clock_and_do_what_their_names_say():
    card = np.full((180, 320, 3), (200, 120, 60), np.uint8)
    card[60:120, 130:190] = 30                                     # a dark "face" in the middle
    frames = [(i / 30, card) for i in range(3)]

    def run(variant):
        out = list(clip_variant_frames(iter(frames), variant))
        assert [t for t, _ in out] == [t for t, _ in frames]
        return [f for _, f in out]
    grey = run("grey")[0].astype(int)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert run("dark")[0].mean() < 0.5 * card.mean()
    low = run("lowres")[0]
    assert max(low.shape[:2]) == 320 and low.shape[:2] == (180, 320)      # already small: unchanged size
    big = np.repeat(np.repeat(card, 4, 0), 4, 1)
    low = list(clip_variant_frames(iter([(0.0, big)]), "lowres"))[0][1]
    assert low.shape[:2] == (180, 320) and abs(int(low[90, 160, 0]) - 30) <= 2
    far = run("far")[0]
    assert far.shape == card.shape and (far[:40] == card[0, 0]).all()      # the border is the edge colour
    assert (far[76:104, 146:174] == 30).all() and (far[60:70, 130:140] == card[0, 0]).all()   # face: half size
    grainy = [f.astype(float) - card for f in run("noise")]
    assert 6 < grainy[0].std() < 10 and not np.array_equal(grainy[0], grainy[1])            # fresh every frame
    assert np.array_equal(run("noise")[1], run("noise")[1])                                  # reproducible
    tilted = run("rot+10")[0]
    assert tilted.shape == card.shape and not np.array_equal(tilted, card)


def test_wide_mouth_variant_opens_the_drivers_mouth():
    """On the bundled clip's first second: where the variant opens the mouth, MediaPipe reads a far
    larger jawOpen than on the original frame, and elsewhere the frame is untouched."""
    import av
    reader = Reader()
    with av.open(str(CLIP)) as c:
        frames = [(f.time, f.to_ndarray(format="rgb24")) for _, f in zip(range(24), c.decode(video=0))]
    wide = list(clip_variant_frames(iter(frames), "widemouth", reader.net3d))
    gained = []
    for (t, orig), (_, moved) in zip(frames, wide):
        if np.array_equal(orig, moved):
            continue
        gained.append(reader.read(moved)[0].p[JAW] - reader.read(orig)[0].p[JAW])
    reader.close()
    assert len(gained) >= 10 and max(gained) > 0.2 and np.median(gained) > 0.05


def _widened(jaw_gain: float, yaw_gain: float):
    """The bundled clip's first 12 frames: (frames, MediaPipe's readings, the driver's series, the
    widening, what the reenactor reads through WiderDriver, the series it is compared with)."""
    import av
    reader = Reader()
    with av.open(str(CLIP)) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(12), c.decode(video=0))]
    plain = [reader.net3d.read(f) for f in frames]
    drv = Series([f.p for f in plain])
    widening = Widening.of(drv, jaw_gain, yaw_gain)
    read = [WiderDriver(reader.net3d, widening).read(f).p for f in frames]
    reader.close()
    return frames, plain, drv, widening, read, widened(drv, widening).p


def _only_widened(index: int, plain, read, series, want, atol: float) -> None:
    """Each frame's reading carries `want(p)` at `index` and the reading's own values elsewhere, the same
    as the compared series."""
    others = [i for i in range(len(PARAM_NAMES)) if i != index]
    for face, w, s in zip(plain, read, series):
        assert w[index] == pytest.approx(want(face.p), abs=atol)
        assert s == pytest.approx(w, abs=atol)
        assert np.allclose(w[others], face.p[others], atol=atol)


def test_a_wider_driver_is_the_clips_jaw_stretched_above_its_rest_and_nothing_else():
    """--jaw-gain: what the reenactor reads and what it is compared with carry the same widened jawOpen
    (rest + K x the opening, within 0..1); the head and the other expressions are the reading's own."""
    frames, plain, drv, widening, read, series = _widened(3.0, 1.0)
    rest = jaw_rest(drv)
    assert rest == pytest.approx(np.percentile([f.p[JAW] for f in plain], 5))
    assert widening.label == " jaw x3"
    _only_widened(JAW, plain, read, series, lambda p: np.clip(rest + 3.0 * (p[JAW] - rest), 0, 1), 1e-6)
    assert max(w[JAW] for w in read) > 2 * max(f.p[JAW] for f in plain) - 2 * rest
    assert WiderDriver(SimpleNamespace(read=lambda *a: None), widening).read(frames[0]) is None


def test_a_driver_turning_wider_is_the_clips_yaw_stretched_about_its_median_with_pitch_and_roll_kept():
    """--yaw-gain: the reading's rotation is turned so that it reads centre + K x (yaw - centre), the
    same as the series it is compared with; pitch, roll and every expression stay the reading's own."""
    _, plain, drv, widening, read, series = _widened(1.0, 1.5)
    centre = yaw_centre(drv)
    assert centre == pytest.approx(np.median([f.p[YAW] for f in plain]))
    assert widening.label == " yaw x1.5"
    _only_widened(YAW, plain, read, series, lambda p: centre + 1.5 * (p[YAW] - centre), 1e-3)
    yaws = np.array([f.p[YAW] for f in plain])
    assert np.ptp([w[YAW] for w in read]) == pytest.approx(1.5 * np.ptp(yaws), rel=1e-3) and np.ptp(yaws) > 0.5


def test_midword_variant_starts_at_the_widest_opening_of_the_first_seconds():
    """The bundled clip's first 4 s: the variant begins at the frame whose jawOpen (MediaPipe) is the
    largest of those in the first MIDWORD_WITHIN_S, keeps every later frame in order, and its clock
    starts at 0 with the original spacing."""
    import av

    from calibration.evaluation.media_variants import MIDWORD_WITHIN_S
    reader = Reader()
    with av.open(str(CLIP)) as c:
        frames = [(f.time, f.to_ndarray(format="rgb24")) for _, f in zip(range(120), c.decode(video=0))]
    cut = list(clip_variant_frames(iter(frames), "midword", reader.net3d))
    jaws = [reader.read(rgb)[0].p[JAW] for t, rgb in frames if t < MIDWORD_WITHIN_S]
    reader.close()
    start = int(np.argmax(jaws))
    assert len(cut) == len(frames) - start and np.array_equal(cut[0][1], frames[start][1])
    assert cut[0][0] == 0.0 and cut[-1][0] == pytest.approx(frames[-1][0] - frames[start][0])


def test_chroma_fringe_measure_sees_coloured_speckle_not_grey_detail():
    rng = np.random.default_rng(1)
    grey_noise = np.repeat(rng.integers(0, 255, (64, 64, 1)), 3, axis=2).astype(np.uint8)
    colour_noise = rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)
    assert chroma_hf(grey_noise) < 1e-3 and chroma_hf(colour_noise) > 20


def test_goals_are_judged_as_the_issue_states():
    base = {"driver_yaw_sd": 5.0, "driver_jaw_sd": 0.05, "yaw_corr": 0.85, "jaw_corr": float("nan"),
            "sface_mean": 0.6, "sface_p10": 0.35, "sface_driver": 0.1, "face_rate": 0.96,
            "drift_p95": 9.0, "driver_drift_p95": 1.0}
    assert judge(dict(base))["pass"]
    for change, failed in (({"yaw_corr": 0.79}, "yaw"), ({"driver_jaw_sd": 0.09}, "jaw"),
                           ({"sface_p10": 0.29}, "identity"), ({"sface_driver": 0.7}, "identity"),
                           ({"face_rate": 0.94}, "face"), ({"drift_p95": 10.5}, "drift")):
        assert judge({**base, **change})["failed"] == [failed], change
    assert judge({**base, "drift_p95": 14.0, "driver_drift_p95": 9.5})["pass"]   # within driver's + 5


def test_each_head_angle_is_compared_with_the_drivers_and_roll_alone_does_not_judge():
    """Closed form: an output that rolls at half the driver's roll and turns against the driver's turn
    reads roll r 1 with gain 0.5 and yaw r -1; a roll that never moves (an avatar whose roll is held at
    the end of its curve) reads no correlation. Roll is recorded, the goals stay the issue's."""
    rng = np.random.default_rng(0)
    n, k = 40, len(PARAM_NAMES)
    yaw, roll = PARAM_NAMES.index("yaw"), PARAM_NAMES.index("roll")
    drv_p = rng.normal(0.0, 4.0, (n, k))
    out_p = drv_p.copy()
    out_p[:, roll] = 0.5 * drv_p[:, roll] + 3.0
    out_p[:, yaw] = -drv_p[:, yaw]
    face = np.eye(4)[0]

    def series(p):   # every frame a face, the same identity, no colour
        return Series(list(p), [face] * n, [np.zeros(3)] * n, [0.0] * n)
    drv = series(drv_p)
    r = pair_metrics(drv, series(out_p), face, 0.0)
    assert r["roll_corr"] == pytest.approx(1.0) and r["roll_gain"] == pytest.approx(0.5)
    assert r["yaw_corr"] == pytest.approx(-1.0) and "yaw" in r["failed"]
    assert r["driver_roll_sd"] == pytest.approx(drv_p[:, roll].std())
    out_p[:, roll] = 7.0
    still = pair_metrics(drv, series(out_p), face, 0.0)
    assert np.isnan(still["roll_corr"]) and "roll" not in " ".join(still["failed"])


def test_a_group_photo_is_read_through_the_crop_around_the_face_enrollment_chose():
    """The reader finds no face in the group as a whole, or another face than enrollment chose: the
    identity reference then comes from the crop enrollment kept around its face; the chosen face
    found in the photo is read there; a photo where neither shows a face is still an error."""
    from types import SimpleNamespace

    class _Pack:
        display = np.full((256, 256, 3), 7, np.uint8)
        meta = {"box": [800.0, 300.0, 100.0]}          # the face enrollment chose

    def reader(found_at):
        def read(rgb):
            if rgb.shape[0] == 256:
                return ("crop", np.ones(3)) if rgb.any() else (None, None)
            if found_at is None:
                return None, None
            x, y = found_at
            return SimpleNamespace(box=(x - 40, y - 50, x + 40, y + 50)), np.zeros(3)
        return SimpleNamespace(read=read)

    group = np.zeros((667, 1000, 3), np.uint8)
    assert np.array_equal(avatar_reference(Path("g.jpg"), group, reader(None), _Pack())[0], np.ones(3))
    assert np.array_equal(avatar_reference(Path("g.jpg"), group, reader((200, 300)), _Pack())[0], np.ones(3))
    assert np.array_equal(avatar_reference(Path("g.jpg"), group, reader((810, 290)), _Pack())[0], np.zeros(3))
    _Pack.display = np.zeros((256, 256, 3), np.uint8)
    with pytest.raises(UserError, match="no face"):
        avatar_reference(Path("g.jpg"), group, reader(None), _Pack())


def test_a_small_face_in_a_wide_photo_is_cropped_around_where_enrollment_finds_it(tmp_path):
    """`PHOTO~crop` looks for the face as enrollment does (find_all: windows, then the padded photo):
    two men on a touchline, 1280x720, were 'no face to crop around' to a read of the whole frame."""
    canvas = Image.new("RGB", (1600, 900), (120, 110, 100))
    canvas.paste(Image.open(ASTRONAUT).convert("RGB").resize((200, 200), Image.BICUBIC), (1200, 500))
    wide = tmp_path / "wide.png"
    canvas.save(wide)
    reader = Reader()
    try:
        assert reader.read(np.asarray(canvas))[0] is None          # the whole frame shows no face
        _, path, rgb = load_portrait(f"{wide}~crop", tmp_path, reader)
        face, _ = reader.read(rgb)
    finally:
        reader.close()
    assert path.is_file() and rgb.shape[0] == rgb.shape[1] < 300 and face is not None


@pytest.mark.slow
def test_one_command_measures_every_pair(tmp_path, monkeypatch):
    """Two portraits (the bundled one and its grey variant) x a short clip: one table row per pair,
    every figure of the issue in the JSON."""
    monkeypatch.setenv("FACEREENACT_CACHE", str(tmp_path / "cache"))
    import streamer.avatar.enroll as enroll
    real = enroll.Enroller.enroll
    monkeypatch.setattr(enroll.Enroller, "enroll",
                        lambda self, photo, name="photo", **kw: real(self, photo, name, True, 40, 60))
    clip = short_clip(tmp_path / "c.mp4", 30)
    out = tmp_path / "m.json"
    assert main(["--avatars", str(ASTRONAUT), f"{ASTRONAUT}~grey", "--clips", str(clip), "--stride", "3",
                 "--media-dir", str(tmp_path / "media"), "--json", str(out), "--markdown", str(tmp_path / "m.md")]) == 0
    pairs = json.loads(out.read_text())["pairs"]
    assert set(pairs) == {"astronaut", "astronaut~grey"}
    r = pairs["astronaut~grey"]["c"]
    for key in ("yaw_corr", "jaw_corr", "driver_yaw_sd", "driver_jaw_sd", "sface_mean", "sface_p10",
                "sface_driver", "face_rate", "drift_p95", "driver_drift_p95", "pass", "roll_corr", "driver_roll_sd"):
        assert key in r
    assert r["frames"] == 30 and r["sampled"] == 10 and 0 <= r["face_rate"] <= 1
    assert (tmp_path / "media" / "astronaut~grey.png").is_file()
    assert (tmp_path / "m.md").read_text().count("| astronaut") == 2
    # a driver opening twice as wide and turning half as far again: the same clip, its jaw's spread
    # doubled (rest held) and its yaw's 1.5-fold, read so
    assert main(["--avatars", str(ASTRONAUT), "--clips", str(clip), "--stride", "3", "--jaw-gain", "2",
                 "--yaw-gain", "1.5", "--media-dir", str(tmp_path / "media"), "--json", str(out)]) == 0
    wide = json.loads(out.read_text())["pairs"]["astronaut"]["c jaw x2 yaw x1.5"]
    assert 1.8 <= wide["driver_jaw_sd"] / pairs["astronaut"]["c"]["driver_jaw_sd"] <= 2.0
    assert wide["driver_yaw_sd"] / pairs["astronaut"]["c"]["driver_yaw_sd"] == pytest.approx(1.5, rel=1e-3)


@pytest.mark.parametrize("gain", ["--jaw-gain=0", "--yaw-gain=-1"])
def test_a_gain_that_widens_nothing_is_one_line_and_exit_2(gain, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--avatars", str(ASTRONAUT), "--clips", str(CLIP), gain])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --jaw-gain and --yaw-gain must be above 0") and "\n" not in err
