"""--zoo vox256 end to end on random-weight checkpoints in the official layouts (the output is noise;
the path is the real one): enrollment with e4e + tuning, run_stream with DECA as Net3D and the
official A and latent formula, and the bad-weights messages."""
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from engines.method.zoos import load_zoo
from engines.weights.random_weights import write_random_vox256
from streamer.avatar.pack import AvatarPack
from tests.media import short_clip

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("vox64")
    write_random_vox256(d, size=64, seed=0, include=("generator", "e4e", "directions", "deca", "ranges"))
    return d


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """The first 12 frames of the bundled clip."""
    return short_clip(tmp_path_factory.mktemp("clip") / "short.mp4", 12)


def run(*args, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_zoo_reads_the_official_a_and_uses_deca(weights):
    zoo = load_zoo("vox256", weights)
    assert zoo.param_names[:4] == ["yaw", "pitch", "roll", "jaw"] and len(zoo.param_names) == 15
    A = zoo.directions()
    assert A.out_shape == (8, 512)
    w = zoo.generator.sample_latents(1, torch.Generator().manual_seed(0))
    shift = A(torch.zeros(1, 15))
    # the official formula: trunc + 0.7 ((w + shift) - trunc) on the first 8 layers
    from engines.method.reenact_latent import official_latent
    trunc = zoo.generator.mean_latent(4096, torch.Generator().manual_seed(0))
    assert torch.allclose(zoo.compose_latent(w, shift), official_latent(w, shift, trunc, 0.7))


@pytest.mark.slow
def test_enroll_and_stream_end_to_end(weights, clip, tmp_path):
    pack_path = tmp_path / "astro.avatar"
    r = run("-m", "streamer.avatar.enroll", "--zoo", "vox256", "--weights", str(weights), "--avatar",
            str(ROOT / "assets" / "astronaut.png"), "--out", str(pack_path), "--invert-steps", "2",
            "--tune-steps", "3", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    pack = AvatarPack.load(pack_path)
    assert pack.zoo == "vox256" and tuple(pack.latent.shape) == (1, 10, 512)
    assert all(k.startswith("convs.") and 4 <= int(k.split(".")[1]) <= 11 for k in pack.tuned)
    assert len(pack.p) == 15
    out = tmp_path / "out.mp4"
    r = run("run_stream.py", "--zoo", "vox256", "--weights", str(weights), "--avatar", str(pack_path),
            "--source", str(clip), "--sink", str(out), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "12 frames" in r.stderr
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 12 and frames[0].shape[:2] == (256, 256)
    assert np.std(frames[0]) > 1  # not a blank frame


def test_missing_and_wrong_weights_are_one_line_errors(weights, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("run_stream.py", "--zoo", "vox256", "--weights", str(empty), "--avatar",
            str(ROOT / "assets" / "astronaut.png"), "--source", "lavfi:testsrc2", "--sink", "none",
            "--duration", "1")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "missing 5 vox256 files" in r.stderr
    assert all(f in r.stderr for f in ("stylegan-voxceleb.pt", "e4e-voxceleb.pt", "A_matrix.pt", "deca_model.tar",
                                       "ranges_voxceleb.npy")) and "engines.weights fetch" in r.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in weights.iterdir():
        (bad / f.name).symlink_to(f)
    (bad / "stylegan-voxceleb.pt").unlink()
    torch.save({"g_ema": {"style.1.weight": torch.zeros(3, 3)}}, bad / "stylegan-voxceleb.pt")
    r = run("run_stream.py", "--zoo", "vox256", "--weights", str(bad), "--avatar",
            str(ROOT / "assets" / "astronaut.png"), "--source", "lavfi:testsrc2", "--sink", "none",
            "--duration", "1")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr[-1500:]
