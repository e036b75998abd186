"""--device: resolving the choice, and the reenactor's networks on another device giving the CPU's frames.

The CUDA comparison runs where torch sees a GPU (scripts/gpu_bench.sh runs this file there); on a
CPU-only machine the same harness checks the CPU path against the closed form G(z + A dp - A 0).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.core.device import resolve_device
from engines.core.errors import UserError
from tests.motion_reference import usual_reference

pytest.importorskip("PIL")

CUDA = torch.cuda.is_available()


def test_resolve_device_choices():
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda:0") if CUDA else torch.device("cpu"))
    for bad in ("tpu", "gpu0", "mps"):
        with pytest.raises(UserError, match=f"--device {bad}"):
            resolve_device(bad)


@pytest.mark.skipif(CUDA, reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(UserError, match="sees no CUDA GPU"):
            resolve_device(spec)


@pytest.mark.skipif(not CUDA, reason="no CUDA GPU")
def test_missing_cuda_index_is_a_clear_error():
    with pytest.raises(UserError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


class ScriptedReader:
    """Net3D stand-in that reports a scripted p per frame (the device test is about G and A, and the GPU
    image has no MediaPipe)."""

    def __init__(self, ps):
        self.ps = list(ps)

    def read(self, image, timestamp_ms=None):
        class Reading:
            pass
        r = Reading()
        r.p, r.landmarks = self.ps.pop(0), np.zeros((478, 3), np.float32)
        return r

    def close(self):
        pass


def run_reenactor(device: str, ps, pack, engine_cache: dict):
    from streamer.reenact.engine import AvatarReenactor, Engine
    if device not in engine_cache:
        # the zoo's per-session reader (here the scripted one), not the batched torch Net3D a GPU picks
        engine_cache[device] = Engine("default", log=lambda m: None, progress=False, device=device, net3d="mediapipe")
    engine = engine_cache[device]
    engine.zoo.reader_factory = lambda: ScriptedReader(ps)
    try:
        r = AvatarReenactor(engine, pack, smooth=False, correct=False, out_size=64)
        frame = np.zeros((48, 64, 3), np.uint8)
        return [r.process(frame, t=i / 30).image for i in range(len(ps))], engine
    finally:
        engine.zoo.reader_factory = None


@pytest.fixture(scope="module")
def scripted():
    from engines.models.dcgan import DCGAN
    from streamer.avatar.pack import AvatarPack
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 100, generator=g)
    names = 13
    p_avatar = np.r_[5.0, -3.0, 1.0, np.full(names - 3, 0.1)]
    # the driver: neutral first, then turns, nods and opens the mouth
    steps = np.zeros((4, names))
    steps[1, 0], steps[2, 1], steps[3, 3] = 15.0, -8.0, 0.5
    ps = [p_avatar * 0 + np.r_[0.0, 0.0, 0.0, np.full(names - 3, 0.05)] + s for s in steps]
    # tuned weights on one layer, so the per-avatar copy of G is the one that must move
    tuned = {"main.12.weight": DCGAN.from_checkpoint().main[12].weight * 1.05}
    crop = np.zeros((64, 64, 3), np.uint8)
    pack = AvatarPack("default", z, tuned, crop, crop, {"p": p_avatar.tolist()})
    return pack, ps


def test_cpu_reenactor_renders_the_closed_form(scripted):
    pack, ps = scripted
    frames, engine = run_reenactor("cpu", ps, pack, {})
    A, G = engine.directions, pack.generator(engine.zoo.generator)
    p_av = torch.as_tensor(pack.p, dtype=torch.float32)
    # the head angles' reference glides from the first frame toward where the driver's head usually is
    refs = np.array(ps, dtype=np.float64)
    for i in range(3):
        refs[:, i] = usual_reference(refs[:, i], [k / 30 for k in range(len(ps))])
    refs[:, 3:] = ps[0][3:]
    with torch.no_grad():
        for p, ref, out in zip(ps, refs, frames):
            target = p_av + torch.as_tensor(p - ref, dtype=torch.float32)
            dp = A.normalise(target) - A.normalise(p_av)
            img = G.synthesize(pack.latent + A(dp[None]) - A(torch.zeros(1, A.k)))[0]
            want = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            assert np.abs(out.astype(int) - want.astype(int)).max() <= 1
    # the driver's moves do move the avatar (a test that cannot fail would not)
    assert np.abs(frames[1].astype(int) - frames[0].astype(int)).mean() > 2


@pytest.mark.skipif(not CUDA, reason="no CUDA GPU")
def test_cuda_reenactor_matches_cpu(scripted):
    pack, ps = scripted
    cache: dict = {}
    cpu, _ = run_reenactor("cpu", ps, pack, cache)
    gpu, engine = run_reenactor("cuda", ps, pack, cache)
    assert engine.device.type == "cuda"
    for a, b in zip(cpu, gpu):
        d = np.abs(a.astype(int) - b.astype(int))
        assert d.mean() < 0.5 and d.max() <= 8, (d.mean(), d.max())
