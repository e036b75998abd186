"""Reading user images safely: one-line errors for missing, corrupt or unsupported files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engines.core.errors import UserError

MAX_PIXELS = 40_000_000  # refuse decompression bombs; a 12-MP phone photo is far below
MAX_SIDE = 2048          # detection and cropping need no more; larger photos are downscaled


def read_photo(path: str | Path) -> np.ndarray:
    """Path -> RGB uint8 HxWx3 (EXIF orientation applied, alpha dropped, big photos downscaled)."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    path = Path(path)
    if not path.is_file():
        raise UserError(f"photo not found: {path}")
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im = im.convert("RGB")
            if max(im.size) > MAX_SIDE:
                im.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
            return np.asarray(im).copy()
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image file PIL can read (use JPEG, PNG or WebP)") from None
    except Image.DecompressionBombError:
        raise UserError(f"{path}: image is too large (over {MAX_PIXELS // 1_000_000} MP)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: corrupt or truncated image ({str(e)[:100]})") from None
