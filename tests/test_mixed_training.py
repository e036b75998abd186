"""The paper's mixed training mode (`calibration.train --mixed`): real frames picked from a clip or a
folder, inverted and read like pool samples, cached; batches draw every other source from them."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from calibration.mixed import concat_pools, inverted_pool, real_frames
from calibration.train import TrainConfig, Trainer
from engines.core.errors import UserError
from engines.models.directions import Directions

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "assets" / "pexels_woman.mp4"
ASTRO = ROOT / "assets" / "astronaut.png"


def test_real_frames_from_a_clip_and_a_folder(tmp_path):
    got = real_frames(CLIP, 5)
    assert [n for n, _ in got] == [f"pexels_woman.mp4#{i}" for i in (0, 118, 236, 353, 471)]   # evenly over 472
    assert all(a.shape == (360, 640, 3) and a.dtype == np.uint8 for _, a in got)
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(ASTRO.read_bytes() if name != "notes.txt" else b"x")
    Image.open(ASTRO).convert("RGB").save(tmp_path / "a.jpg")
    assert [n for n, _ in real_frames(tmp_path, 10)] == ["a.jpg", "b.png"]
    with pytest.raises(UserError, match="no such clip or folder"):
        real_frames(tmp_path / "missing.mp4", 3)


def test_inverted_pool_is_read_like_the_statistics_pool_and_cached(tmp_path):
    from engines.core.views import net3d_view, to_uint8
    from engines.method.net3d import MediaPipeNet3D
    from engines.method.zoos import load_zoo
    torch.set_num_threads(1)
    zoo = load_zoo("default")
    (tmp_path / "train_cache_mixed.pt").write_bytes(b"stale")
    pool = inverted_pool(zoo, CLIP, tmp_path, n=2, steps=3, progress=False, log=lambda m: None)
    assert not (tmp_path / "train_cache_mixed.pt").exists()      # prepared from an older pool: dropped
    assert len(pool.p) == 2 and pool.detected.all() and pool.latents.shape == (2, *zoo.generator.latent_shape)
    with MediaPipeNet3D("image") as r, torch.no_grad():           # p is the runtime's reading of G(z)
        faces = [r.read(a) for a in to_uint8(net3d_view(zoo.generator.synthesize(torch.as_tensor(pool.latents))))]
    assert np.allclose(np.stack([f.p for f in faces]), pool.p, atol=1e-4)
    assert json.loads((tmp_path / "mixed_pool.json").read_text())["n"] == 2
    again = inverted_pool(zoo, CLIP, tmp_path, n=2, steps=3, progress=False, log=lambda m: 1 / 0)  # cached
    assert np.array_equal(again.latents, pool.latents)
    both = concat_pools(pool, pool)
    assert len(both.p) == 4 and np.array_equal(both.latents[2:], pool.latents)


def test_mixed_batches_take_every_other_source_from_the_real_rows():
    k, n, n_real = 13, 40, 6

    class Data:
        z = torch.zeros(n, 100)
        p = torch.rand(n, k)

    t = Trainer.__new__(Trainer)       # sample() needs only the data, A's ranges, the RNG and the sampling settings
    cfg = TrainConfig(batch=12)
    t.data, t.batch, t.rng = Data, cfg.batch, torch.Generator().manual_seed(0)
    t.single_fraction, t.expr_range = cfg.single_fraction, cfg.expr_range
    t.A = Directions(k, (100,), 6.0, [f"p{i}" for i in range(k)], "default", [0.0] * k, [1.0] * k)
    t.real_from = n - n_real
    seen = []
    for _ in range(50):
        s, dp, p_ref = Trainer.sample(t)
        assert (s[::2] >= n - n_real).all()                       # half the batch: real frames
        seen.append(s[1::2])
    assert (torch.cat(seen) < n - n_real).any()                    # the rest: the whole pool
    t.real_from = None
    s, _, _ = Trainer.sample(t)
    assert len(s) == 12
