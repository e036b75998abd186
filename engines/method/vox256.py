"""The paper's zoo: StyleGAN2-256 (VoxCeleb), e4e, DECA as Net3D, the official A; user-supplied files.

Net3D follows the direction file: the official A (15 DECA parameters, P_NAMES) reads faces with DECA
on the official crop; an A trained by our calibration on this generator with MediaPipe parameters
reads them with MediaPipe (no FLAME needed). The reenactment latent is the official formula,
w_r = trunc + psi ((w_s + shift) - trunc), psi = 0.7, trunc = mean of 4096 mapped z.
Its recipe is the official PTI (convs 4..11, 200 steps, lr 3e-3), enrollment on every core.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engines.core.errors import UserError
from engines.method.align import OFFICIAL, crop_box, crop_image
from engines.method.net3d import MediaPipeNet3D
from engines.method.pose import PARAM_NAMES
from engines.method.recipes import Tuning, ZooRecipe
from engines.method.reenact_latent import OFFICIAL_PSI, official_latent
from engines.method.zoo import Zoo
from engines.models.deca import P_NAMES, DecaEncoder, angles_before_turn, deca_p, load_ranges
from engines.models.directions import Directions
from engines.models.e4e import E4E
from engines.models.lpips import LPIPS
from engines.models.stylegan2 import StyleGAN2
from engines.weights.files import VOX256, require, weight_path

TRUNC_SAMPLES, TRUNC_SEED = 4096, 0
RECIPE = ZooRecipe(Tuning(tuple(f"convs.{i}." for i in range(4, 12)), 200, 3e-3), inversion_steps=100)


class DecaReader:
    """Per-session Net3D for the official A: MediaPipe finds the face (tracking), DECA reads p on the
    official crop (2x landmark extent, centre up by side/6, 224 px)."""

    def __init__(self, deca, ranges):
        self.tracker = MediaPipeNet3D("video")
        self.deca, self.ranges = deca, ranges

    def read(self, image: np.ndarray, timestamp_ms: int | None = None):
        face = self.tracker.read(image, timestamp_ms)
        return None if face is None else self.reading(image, face)

    def reading(self, image: np.ndarray, face):
        crop = crop_image(image, crop_box(face.landmarks, OFFICIAL), 224)
        x = torch.from_numpy(np.array(crop, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0
        x = x.to(next(self.deca.parameters()).device)   # wherever the engine put the encoder
        with torch.no_grad():
            p = deca_p(self.deca(x), self.ranges)[0].double().cpu().numpy()
        return _Reading(face.landmarks, p)

    def close(self) -> None:
        self.tracker.close()


class _Reading:
    def __init__(self, landmarks, p):
        self.landmarks, self.p = landmarks, p


def load_vox256(weights_dir, directions=None, net3d: str | None = None) -> Zoo:
    """net3d: 'deca' | 'mediapipe' | None (decided by the direction file's parameter names)."""
    a_given = Path(directions) if directions else None
    needs = ["generator"] + ([] if a_given else ["directions"]) + ([] if net3d == "mediapipe" else ["deca", "ranges"])
    a_probe = a_given or (Path(weights_dir) / VOX256["directions"].filename if weights_dir else None)
    if net3d is None and a_probe is not None and a_probe.is_file():
        if Directions.from_checkpoint(a_probe).param_names != list(P_NAMES):
            needs = [n for n in needs if n not in ("deca", "ranges")]   # a MediaPipe-driven A
    require(weights_dir, needs)            # every missing file named at once
    G = StyleGAN2.from_checkpoint(weight_path(weights_dir, "generator"))
    G.shift_shape = (min(8, G.n_latent), G.style_dim)   # the paper shifts W+ layers 0..7
    a_path = Path(directions) if directions else None
    if net3d is None:
        if a_path is None:
            a_path = weight_path(weights_dir, "directions")
        names = Directions.from_checkpoint(a_path).param_names
        net3d = "deca" if names == list(P_NAMES) else "mediapipe"
    reader_factory, device_modules, turn = None, (), None   # None: MediaPipe's own reader and angles
    if net3d == "deca":
        deca = DecaEncoder.from_checkpoint(weight_path(weights_dir, "deca")).eval().requires_grad_(False)
        ranges = load_ranges(weight_path(weights_dir, "ranges"))
        reader_factory = lambda: DecaReader(deca, ranges)   # noqa: E731
        device_modules = (deca,)   # streamer.reenact.engine.Engine moves these to --device
        turn = angles_before_turn
        names = list(P_NAMES)
    elif net3d == "mediapipe":
        names = list(PARAM_NAMES)
    else:
        raise UserError(f"unknown Net3D '{net3d}' for vox256 (deca or mediapipe)")
    trunc = G.mean_latent(TRUNC_SAMPLES, torch.Generator().manual_seed(TRUNC_SEED))
    lp = [Path(weights_dir) / VOX256[n].filename for n in ("lpips_lin", "alexnet")]
    perceptual = None
    if all(p.is_file() for p in lp):  # the official tuning loss 100 L2 + LPIPS(alex) when given
        perceptual = lambda: _load_lpips(*lp)   # noqa: E731
    return Zoo("vox256", G, names, a_path, RECIPE, Path(weights_dir),
               reader_factory=reader_factory,
               latent_composer=lambda w, shift: official_latent(w, shift, trunc, OFFICIAL_PSI),
               encoder_factory=lambda: _load_e4e(weights_dir), perceptual_factory=perceptual,
               device_modules=device_modules, angles_before_turn=turn)


def _load_lpips(lin, alex):
    return LPIPS.from_checkpoint(lin, alex).eval().requires_grad_(False)


def _load_e4e(weights_dir):
    return E4E.from_checkpoint(weight_path(weights_dir, "e4e")).eval().requires_grad_(False)
