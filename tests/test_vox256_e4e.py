"""e4e encoder against the official-code fixture, in both checkpoint layouts.

The recipe weights (209 M parameters, built once for the module) are saved as the paper's VoxCeleb
file {'e': state dict} and as an official omertov file {'state_dict': encoder.* + decoder.*,
'latent_avg', 'opts'}; both load through `E4E.from_checkpoint`.

Tolerance: 1e-4 absolute on codes (|x| <= 1.3 raw, <= 4.2 with latent_avg) and on the tapped features
(|x| <= 6.9): the official code's float32-vs-float64 gap is 1.3e-6, so this leaves ~75x headroom for
summation order while a wrong tap, stride, SE, PReLU or upsample mode shifts codes by O(0.1).
Measured here: 0.0 (bit-identical) for every output and intermediate.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.core.errors import UserError
from engines.models.e4e import E4E
from engines.weights.random_weights import random_stylegan2
from tests.fixture_weights import load_npy, max_abs_diff, recipe_state_dict

NAME = "e4e"
TOL = 1e-4


@pytest.fixture(scope="module")
def files(shared_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("e4e")
    sd = recipe_state_dict(NAME)
    torch.save({"e": sd}, d / "e4e-voxceleb.pt")
    decoder, _ = random_stylegan2(256, channel_multiplier=2, seed=0)  # official pSp decoder: cm 2
    full = {**{"encoder." + k: v for k, v in sd.items()}, **{"decoder." + k: v for k, v in decoder.items()}}
    latent_avg = torch.from_numpy(load_npy(NAME, "inputs/latent_avg.npy"))
    opts = {"encoder_type": "Encoder4Editing", "stylegan_size": 256, "start_from_latent_avg": True,
            "checkpoint_path": "x.pt", "dataset_type": "ffhq_encode"}
    torch.save({"state_dict": full, "latent_avg": latent_avg, "opts": opts}, d / "e4e_official.pt")
    del sd, full, decoder
    return d


@pytest.fixture(scope="module")
def image(shared_dir):
    return torch.from_numpy(load_npy(NAME, "inputs/image_256.npy"))


def test_paper_layout_codes_and_taps(files, image):
    enc = E4E.from_checkpoint(files / "e4e-voxceleb.pt")
    assert enc.n_styles == 14 and enc.latent_avg is None
    trace = {}
    with torch.no_grad():
        codes = enc(image, trace=trace)
    assert codes.shape == (1, 14, 512)
    assert max_abs_diff(codes, load_npy(NAME, "outputs/codes_stelabou.npy")) <= TOL
    for key in ("c1_body6", "c2_body20", "c3_body23", "w0_styles0"):
        assert max_abs_diff(trace[key], load_npy(NAME, f"intermediates/{key}.npy")) <= TOL, key
    # progressive stage 0 (training-time behaviour): every row = styles[0](c3)
    enc.stage = 0
    with torch.no_grad():
        stage0 = enc(image)
    assert max_abs_diff(stage0, load_npy(NAME, "outputs/codes_progressive_stage0.npy")) <= TOL


def test_official_layout_adds_latent_avg(files, image):
    enc = E4E.from_checkpoint(files / "e4e_official.pt")
    assert enc.latent_avg is not None and tuple(enc.latent_avg.shape) == (14, 512)
    with torch.no_grad():
        codes = enc(torch.cat([image, image.flip(-1)]))
    assert codes.shape == (2, 14, 512)
    assert max_abs_diff(codes[:1], load_npy(NAME, "outputs/codes_omertov_with_latent_avg.npy")) <= TOL
    # the two layouts differ exactly by latent_avg (fixture: max diff 0.0)
    ref = load_npy(NAME, "outputs/codes_stelabou.npy") + load_npy(NAME, "inputs/latent_avg.npy")[None]
    assert max_abs_diff(codes[:1], ref.astype(np.float32)) <= TOL


def test_wrong_files_are_named(files, tmp_path):
    with pytest.raises(UserError, match="no 'encoder"):
        torch.save({"state_dict": {"decoder.x": torch.zeros(1)}, "latent_avg": torch.zeros(14, 512)}, tmp_path / "a.pt")
        E4E.from_checkpoint(tmp_path / "a.pt")
    with pytest.raises(UserError, match="StyleGAN2 generator checkpoint"):
        torch.save({"g_ema": {}}, tmp_path / "b.pt")
        E4E.from_checkpoint(tmp_path / "b.pt")
    with pytest.raises(UserError, match=r"Encoder4Editing.*wrong shapes.*'latlayer1.weight'"):
        sd = {k: torch.zeros(v.shape) for k, v in E4E(3).state_dict().items()}
        sd["latlayer1.weight"] = torch.zeros(512, 128, 1, 1)
        torch.save({"e": sd}, tmp_path / "c.pt")
        E4E.from_checkpoint(tmp_path / "c.pt")
