"""The paper's Net3D: DECA's coarse encoder E_flame and the 15-parameter vector p built from it.

E_flame (`deca_model.tar['E_flame']`): ResNet-50 features (2048) -> Linear(2048,1024) -> ReLU ->
Linear(1024,236), split as shape 100, tex 50, exp 50, pose 6, cam 3, light 27 (returned as [B,9,3], as
DECA's decompose_code does). Input: face crop [B,3,224,224], RGB in [0,1], no mean/std normalisation.

p (REFERENCE §1; fixtures deca_eflame/a_matrix): 0 yaw, 1 pitch, 2 roll (Euler degrees from pose[0:3]
scaled by a/40, a/20, a/20 with a = 6), 3 jaw = pose[3] and 4..14 = exp[0..10], each mapped linearly from
its [min, max] (rows 3 and 4..14 of ranges_voxceleb.npy) onto [-6, 6].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from engines.core.errors import UserError
from engines.core.statedict import assign_state_dict, build_on_meta
from engines.core.weights_io import read_checkpoint, require_dict, strip_prefix
from engines.models.resnet import ResNet50Features

P_NAMES = ["yaw", "pitch", "roll", "jaw"] + [f"exp{i:02d}" for i in range(11)]
SPLIT = (("shape", 100), ("tex", 50), ("exp", 50), ("pose", 6), ("cam", 3), ("light", 27))
N_PARAMS = sum(n for _, n in SPLIT)  # 236
SHIFT_SCALE = 6.0  # a: p lives in [-a, a]
ANGLE_SCALES = (40.0, 20.0, 20.0)  # degrees mapped onto a for yaw, pitch, roll
N_EXP = 11
RANGES_SHAPE = (54, 2)
_PI32 = 3.14159265  # the official rad2deg uses this constant
LAYOUT = "DECA deca_model.tar: {'E_flame': ResnetEncoder(236) state dict (encoder.* ResNet-50, layers.0/.2 linear head), ...}"
RANGES_LAYOUT = ("ranges_voxceleb.npy: float [54, 2] of [min, max]; rows 0-2 yaw/pitch/roll (deg), 3 jaw "
                 "(pose[3], rad), 4..53 exp[0..49]")


class DecaEncoder(nn.Module):
    def __init__(self, outsize: int = N_PARAMS):
        super().__init__()
        self.encoder = ResNet50Features()
        self.layers = nn.Sequential(nn.Linear(2048, 1024), nn.ReLU(), nn.Linear(1024, outsize))

    def train(self, mode: bool = True):
        return super().train(False)  # BatchNorm always uses running statistics

    def encode_raw(self, img: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        if img.ndim != 4 or tuple(img.shape[1:]) != (3, 224, 224):
            raise ValueError(f"DECA expects face crops [B, 3, 224, 224] in [0, 1], got {tuple(img.shape)}")
        feats = self.encoder(img, trace)
        if trace is not None:
            trace["features_2048"] = feats
        return self.layers(feats)

    def forward(self, img: torch.Tensor, trace: dict | None = None) -> dict[str, torch.Tensor]:
        return split_params(self.encode_raw(img, trace))

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "DecaEncoder":
        path = Path(path)
        ckpt = require_dict(read_checkpoint(path, "DECA model"), path, "DECA model", LAYOUT)
        if "E_flame" not in ckpt:
            raise UserError(f"{path}: no 'E_flame' entry; expected {LAYOUT}")
        sd = ckpt["E_flame"]
        if not isinstance(sd, dict):
            raise UserError(f"{path}: 'E_flame' is not a state dict; expected {LAYOUT}")
        model = build_on_meta(cls)
        assign_state_dict(model, strip_prefix(sd), path=path, what="DECA E_flame", layout=LAYOUT)
        return model.eval().requires_grad_(False)


def split_params(code: torch.Tensor) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, n in SPLIT:
        out[name] = code[:, i:i + n]
        i += n
    out["light"] = out["light"].reshape(-1, 9, 3)
    return out


# -- rotations --------------------------------------------------------------------------------------
def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Axis-angle [..., 3] -> rotation matrix [..., 3, 3] via the unit quaternion (w first); smooth at 0."""
    theta2 = (aa * aa).sum(-1, keepdim=True)
    small = theta2 <= 1e-12
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))
    half = 0.5 * theta
    k = torch.where(small, 0.5 - theta2 / 48.0, torch.sin(half) / theta)  # sin(t/2)/t, Taylor near 0
    qw = torch.where(small, 1.0 - theta2 / 8.0, torch.cos(half))
    q = torch.cat([qw, aa * k], dim=-1)
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = [
        [w * w + x * x - y * y - z * z, 2 * x * y - 2 * w * z, 2 * w * y + 2 * x * z],
        [2 * w * z + 2 * x * y, w * w - x * x + y * y - z * z, 2 * y * z - 2 * w * x],
        [2 * x * z - 2 * w * y, 2 * w * x + 2 * y * z, w * w - x * x - y * y + z * z],
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def axis_angle_to_euler(aa: torch.Tensor, degrees: bool = True) -> torch.Tensor:
    """Axis-angle [..., 3] -> [yaw, pitch, roll] as DECA's batch_axis2euler (per sample):
    yaw = asin(R[2,0]), pitch = atan2(R[2,1], R[2,2]), roll = atan2(R[1,0], R[0,0]). Differentiable."""
    r = axis_angle_to_matrix(aa)
    yaw = torch.asin(r[..., 2, 0].clamp(-1.0, 1.0))
    # the official divides both atan2 arguments by cos(yaw) >= 0, which leaves the angle unchanged
    pitch = torch.atan2(r[..., 2, 1], r[..., 2, 2])
    roll = torch.atan2(r[..., 1, 0], r[..., 0, 0])
    ang = torch.stack([yaw, pitch, roll], dim=-1)
    return ang * (180.0 / _PI32) if degrees else ang


def angles_before_turn(angles, turn: float) -> np.ndarray:
    """The Euler angles above put roll outermost (R = Rz Ry Rx, about the camera's axis), so an image
    turned `turn` degrees counter-clockwise in its plane reads that much more roll and nothing else."""
    out = np.array(angles, dtype=np.float64)
    out[2] -= turn
    return out


# -- the paper's p ------------------------------------------------------------------------------------
def load_ranges(path: str | Path) -> np.ndarray:
    """ranges_voxceleb.npy -> float64 [54, 2] of [min, max], validated."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ranges file not found: {path} ({RANGES_LAYOUT}; it ships with the official repo "
                        "as libs/configs/ranges_voxceleb.npy)")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # ValueError (pickled object), OSError/EOFError (truncated), ...
        raise UserError(f"{path}: cannot read the ranges file as a numeric .npy "
                        f"({type(e).__name__}: {str(e)[:100]}); expected {RANGES_LAYOUT}") from None
    return validate_ranges(arr, path)


def validate_ranges(arr, path: str | Path = "<ranges>") -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind != "f" or tuple(arr.shape) != RANGES_SHAPE:
        raise UserError(f"{path}: ranges array is {arr.dtype} {tuple(arr.shape)}; expected {RANGES_LAYOUT}")
    used = arr[3:4 + N_EXP].astype(np.float64)
    if not np.all(np.isfinite(used)) or np.any(used[:, 1] <= used[:, 0]):
        raise UserError(f"{path}: rows 3..14 need finite min < max; expected {RANGES_LAYOUT}")
    return arr.astype(np.float64)


def range_coefficients(ranges) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) [12] for jaw then exp0..10: the line through (min, -6) and (max, +6)."""
    r = validate_ranges(ranges)[3:4 + N_EXP]
    a = 2 * SHIFT_SCALE / (r[:, 1] - r[:, 0])
    return a, -SHIFT_SCALE - a * r[:, 0]


def deca_p(params: dict[str, torch.Tensor], ranges) -> torch.Tensor:
    """DECA parameters (dict with 'pose' [B,6] and 'exp' [B,>=11]) -> p [B, 15] in P_NAMES order.
    Differentiable in pose and exp."""
    pose = params["pose"]
    return normalise_p(axis_angle_to_euler(pose[:, :3]), pose[:, 3], params["exp"], ranges)


def normalise_p(angles_deg: torch.Tensor, jaw: torch.Tensor, exp: torch.Tensor, ranges) -> torch.Tensor:
    """[yaw, pitch, roll] degrees [B,3], jaw = pose[3] [B], exp [B,>=11] -> p [B, 15]."""
    dt, dev = angles_deg.dtype, angles_deg.device
    a, b = (torch.as_tensor(v, dtype=dt, device=dev) for v in range_coefficients(ranges))
    scales = torch.tensor([SHIFT_SCALE / s for s in ANGLE_SCALES], dtype=dt, device=dev)
    lin = torch.cat([jaw.reshape(-1, 1), exp[:, :N_EXP]], dim=1) * a + b
    return torch.cat([angles_deg * scales, lin], dim=1)
