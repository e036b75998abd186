"""The response correction kept on disk: a file holds a Correction exactly, and a pack's next engine (a new
process) reads it back instead of measuring, with the same frames out (streamer.reenact.correction_cache)."""
import json
from dataclasses import fields

import av
import numpy as np
import pytest
import torch

from engines.method.correction import Correction, JawDrift, JawFar, JawPitch
from engines.method.correction_file import load_correction, save_correction
from streamer.reenact import correction_cache
from streamer.reenact.engine import AvatarReenactor, Engine
from tests.media import CLIP


def same(x, y) -> bool:
    """Equal values of equal types (a numpy scalar as its Python one), tensors and arrays of equal dtype,
    all the way down."""
    x, y = (v.item() if isinstance(v, np.generic) else v for v in (x, y))
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    if isinstance(x, np.ndarray):
        return isinstance(y, np.ndarray) and x.dtype == y.dtype and np.array_equal(x, y)
    if isinstance(x, (tuple, dict)) or hasattr(x, "__dataclass_fields__"):
        if type(x) is not type(y):
            return False
        if isinstance(x, tuple):
            return len(x) == len(y) and all(same(a, b) for a, b in zip(x, y))
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        return all(same(getattr(x, f.name), getattr(y, f.name)) for f in fields(x))
    return type(x) is type(y) and x == y


def a_correction() -> Correction:
    """Every kind of member a Correction holds: curves by index, a transposed tensor, bools, None sides."""
    t = np.arange(-4.0, 11.0)
    return Correction(curves={0: (t, t * 0.5), 3: (t[4:], np.sqrt(t[4:]))},
                      drift=torch.arange(18.0).view(3, 6).t().reshape(2, 3, 3).transpose(1, 2),
                      gates=torch.tensor([[True, False, True], [False, True, True]]),
                      reach=(torch.tensor([1.0, 2.0, 3.0, 0.5])[:3], 3),
                      jaw_far=JawFar(3, 0.8, 2.5, (t[4:], t[4:] * 0.3), torch.tensor([1.0, 2.0, 3.0])),
                      octant_reach=torch.full((8,), 2.5), jaw_pitch=JawPitch(np.float64(1.7), (None, (t, t))),
                      jaw_drift=JawDrift({1: (t, t * -0.1)}), jaw=3, pitch=1, mouth_open=False, blind=True)


def test_a_correction_file_holds_every_member_exactly(tmp_path):
    corr = a_correction()
    save_correction(corr, tmp_path / "c.correction")
    back = load_correction(tmp_path / "c.correction")
    assert same(back, corr)
    assert not same(back, Correction(curves=corr.curves, drift=corr.drift + 1, gates=corr.gates))   # same() can fail
    assert isinstance(back.jaw_pitch.bound, float) and back.jaw_pitch.curves[0] is None
    assert [p.name for p in tmp_path.iterdir()] == ["c.correction"]   # no temporary file left behind


def test_a_damaged_or_foreign_correction_file_is_refused_without_running_code(tmp_path):
    good = tmp_path / "c.correction"
    save_correction(a_correction(), good)
    (tmp_path / "cut").write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable correction file"):
        load_correction(tmp_path / "cut")
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other"))
    with pytest.raises(ValueError, match="not a correction file"):
        load_correction(tmp_path / "other")
    # a tree naming a class that is not part of a correction builds nothing
    tree = json.dumps({"class": ["Popen", {"args": {"value": "true"}}]})
    save_file({"x": torch.zeros(1)}, str(tmp_path / "evil"), metadata={"format": "facereenact-correction/1",
                                                                    "tree": tree})
    with pytest.raises(ValueError, match="damaged correction file"):
        load_correction(tmp_path / "evil")


@pytest.fixture
def new_engine():
    """Engines made by the test (each a new process's), closed after it: no stage thread outlives it."""
    made = []

    def make(log=lambda m: None) -> Engine:
        made.append(Engine("default", log=log, progress=False))
        return made[-1]
    yield make
    for engine in made:
        engine.close()


def driving_frames(n: int) -> list[np.ndarray]:
    with av.open(str(CLIP)) as f:
        out = []
        for frame in f.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == n:
                return out
    return out


def test_a_packs_next_engine_reads_its_correction_back_and_shows_the_same_frames(astronaut_pack, tmp_path,
                                                                               monkeypatch, new_engine):
    monkeypatch.setenv("FACEREENACT_CACHE", str(tmp_path / "cache"))
    measured = []
    measure = AvatarReenactor._measure_correction
    monkeypatch.setattr(AvatarReenactor, "_measure_correction",
                        lambda self, *a: measured.append(1) or measure(self, *a))
    first = new_engine().make_reenactor(astronaut_pack)
    stored = list((tmp_path / "cache" / "avatars" / "corrections").iterdir())
    assert measured == [1] and len(stored) == 1 and first.correction is not None
    later = new_engine().make_reenactor(astronaut_pack)   # a new process's
    assert measured == [1] and later.correction is not first.correction and same(later.correction, first.correction)
    frames = driving_frames(12)
    for k, image in enumerate(frames):
        a, b = first.process(image, k / 24), later.process(image, k / 24)
        assert np.array_equal(a.image, b.image)
    assert sum(first.process(image, (12 + k) / 24).face_found for k, image in enumerate(frames)) > 6
    for r in (first, later):
        r.close()


def test_entries_by_setting_a_damaged_one_measured_again_an_unwritable_cache_said_once(astronaut_pack, tmp_path,
                                                                                     monkeypatch, new_engine):
    monkeypatch.setattr(AvatarReenactor, "_measure_correction", lambda self, *a: a_correction())
    said = []
    monkeypatch.setenv("FACEREENACT_CACHE", str(tmp_path / "cache"))
    engine = new_engine(said.append)
    engine.make_reenactor(astronaut_pack).close()
    entry, = (tmp_path / "cache" / "avatars" / "corrections").iterdir()
    engine.make_reenactor(astronaut_pack, out_size=128).close()   # another setting: another entry
    assert len(list(entry.parent.iterdir())) == 2
    entry.write_bytes(entry.read_bytes()[:100])
    r = new_engine(said.append).make_reenactor(astronaut_pack)
    assert same(r.correction, a_correction()) and same(load_correction(entry), a_correction())
    assert any("measured again" in m and entry.name in m for m in said)
    assert sum("avatar: measuring" in m for m in said) == 3   # each measurement said: two settings, then again
    r.close()
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("FACEREENACT_CACHE", str(tmp_path / "file" / "cache"))
    said.clear()
    engine = new_engine(said.append)
    for out_size in (128, 192):   # two entries that cannot be written: one line
        r = engine.make_reenactor(astronaut_pack, out_size=out_size)
        assert same(r.correction, a_correction())
        r.close()
    assert len([m for m in said if "not kept" in m]) == 1


def test_an_uploads_correction_is_kept_in_its_private_cache(astronaut_pack, tmp_path, monkeypatch, new_engine):
    """An uploaded photo's enrollments live in the upload folder's private cache, deleted with it
    (streamer.web): so does its correction, and none reaches the user cache."""
    from streamer.avatar.enroll import private_cache
    from streamer.avatar.pack import AvatarPack
    monkeypatch.setattr(AvatarReenactor, "_measure_correction", lambda self, *a: a_correction())
    monkeypatch.setenv("FACEREENACT_CACHE", str(tmp_path / "user"))
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    photo = uploads / "me.png"
    photo.write_bytes(b"a photo enrolled elsewhere")
    private_cache(uploads, uploads / "packs")
    try:
        engine = new_engine()
        engine.remember(photo, AvatarPack.load(astronaut_pack))   # enrolled in another process
        engine.make_reenactor(photo).close()
    finally:
        private_cache(uploads, None)
    assert len(list((uploads / "packs" / "corrections").iterdir())) == 1 and not (tmp_path / "user").exists()


def test_an_entry_is_named_by_the_pack_the_settings_and_the_code(astronaut_pack, tmp_path, monkeypatch):
    from streamer.avatar.pack import AvatarPack
    pack = AvatarPack.load(astronaut_pack)
    path = correction_cache.CorrectionCache.path
    here = path(tmp_path, pack, ("default", 1))
    assert path(tmp_path, AvatarPack.load(astronaut_pack), ("default", 1)) == here   # loaded again: the same
    assert path(tmp_path, pack, ("default", 2)) != here
    moved = AvatarPack.load(astronaut_pack)
    moved.latent = moved.latent + 1e-6
    assert path(tmp_path, moved, ("default", 1)) != here
    monkeypatch.setattr(correction_cache, "code_fingerprint", lambda: "other code")
    assert path(tmp_path, pack, ("default", 1)) != here
