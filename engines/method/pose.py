"""The default zoo's pose vector p and its conventions.

p = [yaw, pitch, roll, <expression blendshapes>]:
  * angles in degrees, from MediaPipe's facial transformation matrix M (canonical face -> camera space,
    right-handed, x right, y up, z toward the viewer). With R = M[:3, :3] = Ry(yaw) @ Rx(pitch) @ Rz(roll):
      yaw   = atan2(R[0,2], R[2,2])   positive: the nose turns toward image right (subject's left)
      pitch = asin(-R[1,2])            positive: the nose turns down
      roll  = atan2(R[1,0], R[1,1])    positive: the head tilts counter-clockwise as seen in the image
  * expressions: MediaPipe blendshape scores in [0, 1], the subset EXPRESSIONS below (mouth, eyes, brows).
"""
from __future__ import annotations

import numpy as np
import torch

from engines.models.facelandmarker import BLENDSHAPE_NAMES  # mediapipe's order; index 0 is '_neutral'

ANGLES = ["yaw", "pitch", "roll"]
EXPRESSIONS = [
    "jawOpen",
    "mouthSmileLeft", "mouthSmileRight",
    "eyeBlinkLeft", "eyeBlinkRight",
    "browInnerUp", "browDownLeft", "browDownRight",
    "mouthPucker", "mouthFunnel",
]
PARAM_NAMES = ANGLES + EXPRESSIONS

EXPRESSION_INDEX = [BLENDSHAPE_NAMES.index(n) for n in EXPRESSIONS]


def euler_from_rotation(R):
    """R [..., 3, 3] (numpy or torch) -> (yaw, pitch, roll) in degrees, convention in the module doc."""
    if isinstance(R, torch.Tensor):
        yaw = torch.atan2(R[..., 0, 2], R[..., 2, 2])
        pitch = torch.asin((-R[..., 1, 2]).clamp(-1.0, 1.0))
        roll = torch.atan2(R[..., 1, 0], R[..., 1, 1])
        return torch.rad2deg(torch.stack([yaw, pitch, roll], -1))
    R = np.asarray(R, dtype=np.float64)
    yaw = np.arctan2(R[..., 0, 2], R[..., 2, 2])
    pitch = np.arcsin(np.clip(-R[..., 1, 2], -1.0, 1.0))
    roll = np.arctan2(R[..., 1, 0], R[..., 1, 1])
    return np.degrees(np.stack([yaw, pitch, roll], -1))


def rotation_from_euler(angles_deg):
    """Inverse of euler_from_rotation (numpy): [..., 3] degrees -> [..., 3, 3]."""
    y, p, r = np.radians(np.asarray(angles_deg, dtype=np.float64)).T
    cy, sy, cp, sp, cr, sr = np.cos(y), np.sin(y), np.cos(p), np.sin(p), np.cos(r), np.sin(r)
    one, zero = np.ones_like(y), np.zeros_like(y)
    Ry = np.stack([np.stack([cy, zero, sy], -1), np.stack([zero, one, zero], -1), np.stack([-sy, zero, cy], -1)], -2)
    Rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cp, -sp], -1), np.stack([zero, sp, cp], -1)], -2)
    Rz = np.stack([np.stack([cr, -sr, zero], -1), np.stack([sr, cr, zero], -1), np.stack([zero, zero, one], -1)], -2)
    return Ry @ Rx @ Rz


def before_image_turn(angles_deg, turn_deg: float) -> np.ndarray:
    """The (yaw, pitch, roll) in degrees a head must show so that, once its image is turned `turn_deg`
    degrees counter-clockwise in the image's plane, it reads as angles_deg [3]. The turn is about the
    camera's axis, outermost, where roll is innermost (Ry Rx Rz), so it moves yaw and pitch into
    each other: a head pitched 17 degrees and turned by 12 reads 3.5 degrees of yaw it was not asked for."""
    return euler_from_rotation(rotation_from_euler(np.array([0.0, 0.0, -turn_deg]))
                               @ rotation_from_euler(np.asarray(angles_deg, dtype=np.float64)))


def pose_vector(matrix: np.ndarray, blendshapes: np.ndarray) -> np.ndarray:
    """MediaPipe outputs for one face -> p (float64, len(PARAM_NAMES))."""
    R = np.asarray(matrix, dtype=np.float64)[:3, :3]
    R = R / np.cbrt(np.linalg.det(R))  # the solved transform may carry a uniform scale
    angles = euler_from_rotation(R)
    return np.concatenate([angles, np.asarray(blendshapes, dtype=np.float64)[EXPRESSION_INDEX]])
