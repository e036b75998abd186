"""The side-by-side view (`--side-by-side`): driver | avatar photo | result, all at the result's height."""
from __future__ import annotations

import numpy as np
from PIL import Image


def side_by_side(driver: np.ndarray, photo: np.ndarray, result: np.ndarray) -> np.ndarray:
    h = result.shape[0]
    w = max(1, round(driver.shape[1] * h / driver.shape[0]))
    drv = np.asarray(Image.fromarray(driver).resize((w, h), Image.BILINEAR))
    avatar = np.asarray(Image.fromarray(photo).resize((h, h), Image.BICUBIC))
    return np.concatenate([drv, avatar, result], axis=1)
