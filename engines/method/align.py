"""Face crops: MediaPipe landmarks -> a square box framed the way the zoo's generator frames faces.

The official recipe (REFERENCE §1): a square of 2x the landmark extent, centre shifted up by side/6,
no rotation, bicubic resize. Each zoo keeps that recipe with its own two constants; for the default
zoo they are measured on the generator's own faces (calibration.stats writes them) so an aligned
photo looks like a generated sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class CropRecipe:
    extent_factor: float = 2.0      # box side = factor * max(landmark width, height)
    shift_up: float = 1.0 / 6.0     # box centre = landmark-box centre - shift_up * side (image y down)
    shift_right: float = 0.0


OFFICIAL = CropRecipe()


def crop_box(landmarks_xy: np.ndarray, recipe: CropRecipe = OFFICIAL) -> np.ndarray:
    """[N, >=2] landmarks in pixels -> box (cx, cy, side)."""
    xy = np.asarray(landmarks_xy)[:, :2]
    lo, hi = xy.min(0), xy.max(0)
    side = recipe.extent_factor * float((hi - lo).max())
    cx = (lo[0] + hi[0]) / 2 + recipe.shift_right * side
    cy = (lo[1] + hi[1]) / 2 - recipe.shift_up * side
    return np.array([cx, cy, side], dtype=np.float64)


def crop_image(image: np.ndarray, box, size: int) -> np.ndarray:
    """Cut box (cx, cy, side) out of an RGB uint8 image as size x size, bicubic; outside = edge pixels."""
    cx, cy, side = (float(v) for v in box)
    h, w = image.shape[:2]
    x0, y0 = cx - side / 2, cy - side / 2
    # pad so the box is inside the image, then let PIL resample the exact (sub-pixel) box
    pad = int(np.ceil(max(0.0, -x0, -y0, x0 + side - w, y0 + side - h))) + 2
    src = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad > 2 else image
    off = pad if pad > 2 else 0
    box_px = (x0 + off, y0 + off, x0 + side + off, y0 + side + off)
    return np.asarray(Image.fromarray(src).resize((size, size), Image.BICUBIC, box=box_px))


def box_to_crop_coords(points_xy: np.ndarray, box, size: int) -> np.ndarray:
    """Frame pixels -> crop pixels for the given box."""
    cx, cy, side = box
    return (np.asarray(points_xy)[..., :2] - [cx - side / 2, cy - side / 2]) * (size / side)
