"""Random-weight stand-ins for the vox256 files, written in the official layouts.

For end-to-end smoke tests of `--zoo vox256` and GPU benchmarks without the real (licensed) files:

    python -m engines.weights.random_weights DIR [--size 64] [--seed 0] [--training]

Shapes are the official ones (e4e alone is 209 M parameters, 838 MB), so loaders, validation and
speed are exercised for real; `size=64` makes the generator (and the e4e head count, 10 rows) small
for fast CPU tests. Values follow each layer's own initialisation scale (equalised-lr weights N(0,1),
He-scaled plain convs, identity BatchNorm), so activations stay finite; the images mean nothing.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from engines.core.errors import main_guard
from engines.core.statedict import build_on_meta
from engines.weights.files import VOX256


def _fill(sd_meta: dict, g: torch.Generator, rule) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd_meta.items():
        shape = tuple(v.shape)
        if not v.dtype.is_floating_point:
            out[k] = torch.zeros(shape, dtype=v.dtype)
            continue
        out[k] = rule(k, shape, g)
    return out


def _plain_rule(k: str, shape, g) -> torch.Tensor:
    """torch-layer networks (IR-SE, ResNet, AlexNet): He-scaled weights, identity BatchNorm."""
    leaf = k.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return torch.ones(shape)
    if leaf in ("running_mean", "bias"):
        return torch.zeros(shape)
    if len(shape) == 1:  # BatchNorm gamma
        return torch.ones(shape)
    if k.endswith(".linear.weight"):  # e4e EqualLinear: N(0,1), scaled at run time
        return torch.randn(shape, generator=g)
    return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))


def _irse_rule(k: str, shape, g) -> torch.Tensor:
    if k in ("input_layer.2.weight",) or (k.startswith("body.") and ".res_layer.2.weight" in k):
        return torch.full(shape, 0.25)  # PReLU
    return _plain_rule(k, shape, g)


def _sg2_rule(k: str, shape, g) -> torch.Tensor:
    from engines.models.stylegan2_ops import make_fir_kernel
    if k.endswith(".kernel"):
        return make_fir_kernel((1, 3, 3, 1), 4.0)
    if k.startswith("style.") and k.endswith(".weight"):
        return torch.randn(shape, generator=g) * 100.0  # lr_mul 0.01
    if k.endswith("modulation.bias"):
        return torch.ones(shape)
    if k.endswith("noise.weight") or k.endswith(".bias"):
        return torch.zeros(shape)
    return torch.randn(shape, generator=g)


def random_stylegan2(size: int = 256, channel_multiplier: int = 1, seed: int = 0) -> tuple[dict, torch.Tensor]:
    from engines.models.stylegan2 import StyleGAN2
    meta = build_on_meta(lambda: StyleGAN2(size, channel_multiplier=channel_multiplier))
    sd = _fill(meta.state_dict(), torch.Generator().manual_seed(seed), _sg2_rule)
    g = StyleGAN2.from_state_dict(sd)
    return sd, g.mean_latent(4096, torch.Generator().manual_seed(seed + 1))[0]


def random_e4e(n_styles: int = 14, seed: int = 0) -> dict:
    from engines.models.e4e import E4E
    return _fill(build_on_meta(lambda: E4E(n_styles)).state_dict(), torch.Generator().manual_seed(seed), _irse_rule)


def random_deca(seed: int = 0) -> dict:
    from engines.models.deca import DecaEncoder
    sd = _fill(build_on_meta(DecaEncoder).state_dict(), torch.Generator().manual_seed(seed), _plain_rule)
    sd["layers.2.weight"] *= 0.1  # keep the 236 outputs (pose in radians, exp) in a plausible range
    return sd


def random_arcface(seed: int = 0) -> dict:
    from engines.models.arcface import ArcFace
    return _fill(build_on_meta(ArcFace).state_dict(), torch.Generator().manual_seed(seed), _irse_rule)


def random_lpips(seed: int = 0) -> tuple[dict, dict]:
    """(torchvision-style alexnet state dict, lpips linear-head state dict); heads are >= 0 like lpips'."""
    from engines.models.lpips import LPIPS
    sd = _fill(build_on_meta(LPIPS).state_dict(), torch.Generator().manual_seed(seed), _plain_rule)
    alex = {k: v for k, v in sd.items() if k.startswith("features.")}
    lin = {k: v.abs() for k, v in sd.items() if k.startswith("lin")}
    return alex, lin


def random_ranges() -> np.ndarray:
    r = np.zeros((54, 2))
    r[0:3] = [[-40, 40], [-20, 20], [-20, 20]]
    r[3] = [-0.1, 0.2]
    r[4:] = [-1.0, 1.0]
    return r


def write_random_vox256(out_dir: str | Path, size: int = 256, seed: int = 0, training: bool = False,
                        include: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Write random-weight vox256 files (registry file names, official layouts) into out_dir.

    size: generator resolution (256 = the paper's; 64 for fast CPU tests; e4e then has 10 rows).
    training: also write the ArcFace and LPIPS files. include: restrict to these registry names.
    Returns {registry name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = include or tuple(n for n, w in VOX256.items() if training or w.role == "inference")
    n_latent = 2 * int(math.log2(size)) - 2
    paths = {}

    def dest(name):
        paths[name] = out / VOX256[name].filename
        return paths[name]

    if "generator" in names:
        sd, avg = random_stylegan2(size, 1, seed)
        torch.save({"g_ema": sd, "latent_avg": avg}, dest("generator"))
    if "e4e" in names:
        torch.save({"e": random_e4e(n_latent, seed + 1)}, dest("e4e"))
    if "directions" in names:
        g = torch.Generator().manual_seed(seed + 2)
        a = {"linear.weight": torch.randn(8 * 512, 15, generator=g) * 0.03,
             "linear.bias": torch.randn(8 * 512, generator=g) * 0.03}
        torch.save({"A_matrix": a, "learned_directions": 15, "shift_scale": 6.0, "w_plus": True,
                    "num_layers_shift": 8, "shift_dim": 512}, dest("directions"))
    if "deca" in names:
        torch.save({"E_flame": random_deca(seed + 3)}, dest("deca"))
    if "ranges" in names:
        np.save(dest("ranges"), random_ranges())
    if "arcface" in names:
        torch.save(random_arcface(seed + 4), dest("arcface"))
    if "lpips_lin" in names or "alexnet" in names:
        alex, lin = random_lpips(seed + 5)
        if "lpips_lin" in names:
            torch.save(lin, dest("lpips_lin"))
        if "alexnet" in names:
            torch.save(alex, dest("alexnet"))
    return paths


@main_guard
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engines.weights.random_weights", description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--size", type=int, default=256, help="generator resolution (64 for fast tests)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--training", action="store_true", help="also write ArcFace and LPIPS files")
    args = ap.parse_args(argv)
    for name, p in write_random_vox256(args.dir, args.size, args.seed, args.training).items():
        print(f"{name:<11} {p} ({p.stat().st_size / 2 ** 20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
