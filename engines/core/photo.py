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
            im = eight_bit(im).convert("RGB")
            if max(im.size) > MAX_SIDE:
                im.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
            return np.asarray(im).copy()
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image file PIL can read (use JPEG, PNG or WebP)") from None
    except Image.DecompressionBombError:
        raise UserError(f"{path}: image is too large (over {MAX_PIXELS // 1_000_000} MP)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: corrupt or truncated image ({str(e)[:100]})") from None


def eight_bit(im):
    """A PIL image in a grey mode of more than 8 bits (16-bit PNG or TIFF, 32-bit integer or float) ->
    its 8-bit 'L' image, scaled by the mode's range; any other image as it is. PIL's own conversion
    clips at 255: a 16-bit scan of a grey-scale portrait came out a white frame."""
    from PIL import Image
    if not (im.mode.startswith("I;16") or im.mode in ("I", "F")):
        return im
    a = np.asarray(im, dtype=np.float64)
    top = a.max(initial=0.0)
    if im.mode.startswith("I;16") or top > 255:
        full = 65535.0
    elif im.mode == "F" and top <= 1:     # a float image in 0..1
        full = 1.0
    else:                                 # 32-bit values that fit 8 bits
        full = 255.0
    return Image.fromarray(np.clip(a / full * 255 + 0.5, 0, 255).astype(np.uint8))
