"""The paper's model zoo ("vox256"): files users bring, their layouts, where to get them, checks.

The command line over this table is engines.weights.cli (`python -m engines.weights status|fetch`);
the downloads are engines.weights.fetch. docs/weights.md has the details and licences.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engines.core.errors import UserError

REPO = "https://github.com/StelaBou/stylegan_directions_face_reenactment"


@dataclass(frozen=True)
class WeightFile:
    name: str            # registry id
    filename: str        # expected file name inside the weights folder
    role: str            # 'inference' (needed per frame / per avatar) or 'training' (calibration losses)
    what: str
    layout: str
    source: str
    licence: str
    # load + validate -> (one-line summary, W+ rows the file implies or None); raises UserError
    check: Callable[[Path], tuple[str, int | None]]


def _check_generator(p: Path) -> str:
    from engines.models.stylegan2 import StyleGAN2
    g = StyleGAN2.from_checkpoint(p)
    return (f"{g.size} px, channel multiplier {g.channel_multiplier}, {g.n_latent} W+ layers, "
            f"latent_avg {'yes' if g.latent_avg is not None else 'no'}"), g.n_latent


def _check_e4e(p: Path) -> str:
    from engines.models.e4e import E4E
    e = E4E.from_checkpoint(p)
    return (f"{e.n_styles} style rows, latent_avg {'added' if e.latent_avg is not None else 'none (paper layout)'}",
            e.n_styles)


def _check_directions(p: Path) -> str:
    from engines.models.directions import Directions
    d = Directions.from_checkpoint(p)
    return f"{d.k} directions -> shift {list(d.out_shape)}, shift_scale {d.shift_scale:g}", d.out_shape[0]


def _check_deca(p: Path) -> str:
    from engines.models.deca import DecaEncoder
    DecaEncoder.from_checkpoint(p)
    return "E_flame: ResNet-50 + head -> 236", None


def _check_ranges(p: Path) -> str:
    from engines.models.deca import load_ranges
    r = load_ranges(p)
    return f"{r.shape[0]}x{r.shape[1]}, jaw range [{r[3, 0]:.3g}, {r[3, 1]:.3g}]", None


def _check_arcface(p: Path) -> str:
    from engines.models.arcface import ArcFace
    ArcFace.from_checkpoint(p)
    return "IR-SE-50 -> 512-d embedding", None


def _check_lpips_lin(p: Path) -> str:
    from engines.models.lpips import LAYOUT, _state_dict
    sd = _state_dict(p, "LPIPS linear heads")
    want = {f"lin{i}.model.1.weight": (1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))}
    bad = [k for k, s in want.items() if k not in sd or tuple(sd[k].shape) != s]
    if bad:
        raise UserError(f"{p}: LPIPS heads missing or mis-shaped: {bad[:2]}; expected {LAYOUT}")
    return "5 linear heads (alex, v0.1)", None


def _check_alexnet(p: Path) -> str:
    from engines.models.lpips import LPIPS, _state_dict
    from engines.core.statedict import build_on_meta, check_state_dict
    sd = {k: v for k, v in _state_dict(p, "AlexNet weights").items() if k.startswith("features.")}
    problem = check_state_dict(build_on_meta(LPIPS).features, {k[9:]: v for k, v in sd.items()})
    if problem:
        raise UserError(f"{p}: AlexNet features do not match torchvision alexnet (features.0/3/6/8/10): {problem}")
    return "torchvision AlexNet features", None


VOX256: dict[str, WeightFile] = {w.name: w for w in [
    WeightFile("generator", "stylegan-voxceleb.pt", "inference", "StyleGAN2 generator (VoxCeleb1, 256 px)",
               "rosinality .pt: {'g_ema': state dict, optional 'latent_avg'}; Generator(256, 512, 8, channel_multiplier=1)",
               f"{REPO} README, 'Pretrained Models' -> StyleGAN2-VoxCeleb1",
               "no licence stated by the authors; trained with NVlabs stylegan2-ada-pytorch (NVIDIA Source Code "
               "Licence, non-commercial): research use only", _check_generator),
    WeightFile("e4e", "e4e-voxceleb.pt", "inference", "e4e inversion encoder (VoxCeleb1)",
               "{'e': Encoder4Editing(50,'ir_se',256) state dict} (official omertov layout also accepted)",
               f"{REPO} README, 'Pretrained Models' -> e4e-VoxCeleb1",
               "no licence stated by the authors (e4e code is MIT): research use only", _check_e4e),
    WeightFile("directions", "A_matrix.pt", "inference", "direction matrix A (15 -> 8x512)",
               "{'A_matrix': {linear.weight [4096,15], linear.bias [4096]}, learned_directions, shift_scale, "
               "w_plus, num_layers_shift, shift_dim}",
               f"{REPO} README, 'Inference' -> A-matrix (or train your own: calibration/)",
               "no licence stated by the authors: research use only", _check_directions),
    WeightFile("deca", "deca_model.tar", "inference", "DECA coarse encoder E_flame (Net3D)",
               "torch file {'E_flame': ResnetEncoder(236) state dict, 'E_detail', 'D_detail'}",
               "https://github.com/yfeng95/DECA (register at https://deca.is.tue.mpg.de and accept the licence), "
               f"also linked in {REPO} README 'Auxiliary Models'",
               "DECA/FLAME licence: non-commercial scientific research only", _check_deca),
    WeightFile("ranges", "ranges_voxceleb.npy", "inference", "p normalisation ranges (jaw, expressions)",
               "numpy float [54, 2] of [min, max]; rows 0-2 angles, 3 jaw, 4-53 exp",
               f"{REPO}: libs/configs/ranges_voxceleb.npy (or estimate your own: calibration.stats)",
               "no licence stated by the authors", _check_ranges),
    WeightFile("arcface", "model_ir_se50.pth", "training", "ArcFace IR-SE-50 (identity loss)",
               "state dict of Backbone(50, 0.6, 'ir_se'): input_layer.*, body.*, output_layer.{0,3,4}.*",
               "https://github.com/TreB1eN/InsightFace_Pytorch (IR-SE50), also linked in the pSp/e4e and "
               f"{REPO} READMEs",
               "code MIT; weights trained on MS-Celeb-1M (withdrawn dataset): research use only", _check_arcface),
    WeightFile("lpips_lin", "alex.pth", "training", "LPIPS v0.1 linear heads for AlexNet (perceptual loss)",
               "state dict lin0..lin4.model.1.weight [1,C,1,1], C = 64,192,384,256,256",
               "the lpips package: lpips/weights/v0.1/alex.pth (https://github.com/richzhang/PerceptualSimilarity)",
               "BSD-2-Clause", _check_lpips_lin),
    WeightFile("alexnet", "alexnet-owt-7be5be79.pth", "training", "torchvision AlexNet ImageNet weights (LPIPS trunk)",
               "torchvision state dict features.{0,3,6,8,10}.{weight,bias} (classifier.* ignored)",
               "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth (torchvision model zoo)",
               "torchvision BSD-3-Clause; ImageNet-trained weights: check ImageNet terms", _check_alexnet),
]}


def weight_path(weights_dir: str | Path | None, name: str) -> Path:
    """Path of one zoo file; UserError naming the file and where to get it when absent."""
    w = VOX256[name]
    if weights_dir is None:
        raise UserError(f"the vox256 zoo needs a weights folder (--weights DIR) holding {w.filename} ({w.what}); "
                        f"get the files with: python -m engines.weights fetch --dir DIR (docs/weights.md)")
    d = Path(weights_dir)
    if not d.is_dir():
        raise UserError(f"weights folder not found: {d}")
    p = d / w.filename
    if not p.is_file():
        raise UserError(f"missing {w.filename} ({w.what}) in {d}; get it from {w.source}")
    return p


def require(weights_dir: str | Path | None, names) -> None:
    """Every one of `names` present in the folder, or one UserError listing each missing file at once
    (with every other missing inference file, so one fetch or copy fixes them all)."""
    if weights_dir is None:
        weight_path(None, next(iter(names)))
    d = Path(weights_dir)
    if not d.is_dir():
        raise UserError(f"weights folder not found: {d}")
    missing = [w for w in VOX256.values() if w.role == "inference" and not (d / w.filename).is_file()]
    if not any(w.name in names for w in missing):
        return
    listed = "; ".join(f"{w.filename} ({w.what})" for w in missing)
    raise UserError(f"missing {len(missing)} vox256 file{'s' if len(missing) > 1 else ''} in {d}: {listed}; "
                    f"get them with: python -m engines.weights fetch --dir {d} (docs/weights.md)")


def validate(weights_dir: str | Path, name: str) -> str:
    """Load and check one file; returns its summary line, raises UserError."""
    return VOX256[name].check(weight_path(weights_dir, name))[0]


@dataclass
class Status:
    file: WeightFile
    state: str           # 'present' | 'missing' | 'invalid'
    detail: str
    rows: int | None = None


def status(weights_dir: str | Path, roles=("inference", "training")) -> list[Status]:
    """One Status per registry entry whose role is in `roles` (each present file is fully loaded)."""
    out = []
    for w in VOX256.values():
        if w.role not in roles:
            continue
        p = Path(weights_dir) / w.filename
        if not p.is_file():
            out.append(Status(w, "missing", f"get it from {w.source}, or with: python -m engines.weights fetch"))
            continue
        try:
            out.append(Status(w, "present", *w.check(p)))
        except UserError as e:
            out.append(Status(w, "invalid", str(e)))
    return out


def consistency(rows: list[Status]) -> list[str]:
    """Cross-file problems among valid files: e4e rows must equal G's W+ layers, A's must not exceed them."""
    by = {s.file.name: s for s in rows if s.state == "present"}
    if "generator" not in by:
        return []
    n_g, issues = by["generator"].rows, []
    for name in ("e4e", "directions"):
        if name in by:
            n = by[name].rows
            if (n != n_g) if name == "e4e" else (n > n_g):
                issues.append(f"{by[name].file.filename} gives {n} W+ rows but the generator has {n_g} layers")
    return issues
