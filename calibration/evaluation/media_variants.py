"""Widened test media for the motion tool: variants of portraits and driving clips.

Portraits: mirrored, cropped tight, rotated by +-10 degrees, grey-scale, under-exposed ("dark"), with
an orange colour cast ("warm"), saved as a heavy JPEG ("jpeg": quality 12), with sensor grain ("noise":
sd 12 levels), and seen at low resolution ("lowres": the longer side through 96
pixels and back up, a webcam snapshot's blur). Clips: mirrored, played in
reverse, "wide mouth": the clip with the driver's mouth opened wide and closed again about once a
second (a thin-plate-spline warp that drops the lower lip and chin, the gap painted as a dark mouth),
since none of the available clips opens its mouth wide (jawOpen sd <= 0.12) and wide-open mouths are
where avatars break; and the cameras a caller may have: grey-scale, under-exposed ("dark"), a small
webcam ("lowres": frames delivered at LOWRES_CLIP_SIDE pixels on the longer side), a driver sitting
further away ("far": the frame shrunk to half inside the same canvas), a tilted camera ("rot+10"),
sensor grain that changes every frame ("noise"), and a clip cut mid-word ("midword": from its widest
mouth opening within its first 3 s). A variant is named `<stem>~<variant>`.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from engines.method.pose import PARAM_NAMES

PORTRAIT_VARIANTS = ("mirror", "crop", "rot+10", "rot-10", "grey", "dark", "warm", "lowres", "jpeg", "noise")
DARK_GAIN, DARK_GAMMA = 0.5, 1.3           # an under-exposed photo: half the light, deeper shadows
WARM_GAINS = (1.15, 1.0, 0.72)             # a white balance gone orange (tungsten light)
LOWRES_SIDE = 96                           # a small snapshot: the whole photo seen through this many pixels
JPEG_QUALITY = 12                          # a photo saved and forwarded too often: 8x8 blocks, colour bleed
NOISE_SD = 12.0                            # a phone photo in poor light: sensor grain, grey levels per channel
CLIP_VARIANTS = ("mirror", "reverse", "widemouth", "grey", "dark", "lowres", "far", "rot+10", "noise", "midword")
MIDWORD_WITHIN_S = 3.0                     # "midword" starts at the widest opening within the first 3 s
LOWRES_CLIP_SIDE = 320                     # a 320x240 webcam (or a 320x180 one)
FAR_SCALE = 0.5                            # the driver twice as far from the camera: half the face size
CLIP_NOISE_SD = 8.0                        # a webcam's grain in a dim room, fresh every frame

# MediaPipe FaceMesh indices: inner lip contours (corner 78 to corner 308), lower outer lip, chin
UPPER_INNER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LOWER_INNER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
LOWER_OUTER = [146, 91, 181, 84, 17, 314, 405, 321, 375]
CHIN = [152, 148, 176, 149, 150, 377, 400, 378, 379, 200, 199, 175, 18, 83, 313]
JAW_SIDES = [136, 172, 58, 365, 397, 288]
# what stays: mouth corners, upper lip, nose, eyes, forehead, upper face oval
STILL = [78, 308, 61, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409, 1, 4, 5, 195, 33, 133, 362, 263, 10,
         151, 9, 234, 454, 93, 323, 127, 356, 132, 361, 98, 327]
MOUTH_RGB = (45, 18, 20)
WIDE_PERIOD_S = 1.7      # one open-close cycle
WIDE_AMOUNT = 0.26       # widest opening, as a share of the forehead-chin distance


def split_name(name: str) -> tuple[str, str | None]:
    stem, _, variant = name.partition("~")
    return stem, variant or None


def portrait_variant(rgb: np.ndarray, variant: str | None, face_box=None) -> np.ndarray:
    """`face_box` (x0, y0, x1, y1) is needed for "crop" (a square of 1.6x the face around its centre)."""
    im = Image.fromarray(rgb)
    if variant is None:
        return rgb
    if variant == "mirror":
        im = ImageOps.mirror(im)
    elif variant == "grey":
        im = ImageOps.grayscale(im).convert("RGB")
    elif variant.startswith("rot"):
        # fill with the edge colour so no black wedge gives the face a hard new border
        edge = tuple(int(v) for v in np.median(np.concatenate([rgb[0], rgb[-1]]), 0))
        im = im.rotate(float(variant[3:]), resample=Image.BICUBIC, fillcolor=edge)
    elif variant == "dark":
        x = np.asarray(im, np.float32) / 255.0
        im = Image.fromarray(np.clip(255 * DARK_GAIN * x ** DARK_GAMMA, 0, 255).round().astype(np.uint8))
    elif variant == "warm":
        x = np.asarray(im, np.float32) * np.asarray(WARM_GAINS, np.float32)
        im = Image.fromarray(np.clip(x, 0, 255).round().astype(np.uint8))
    elif variant == "lowres":
        scale = LOWRES_SIDE / max(im.size)
        small = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
        im = small.resize(im.size, Image.BICUBIC)
    elif variant == "jpeg":
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=JPEG_QUALITY)
        im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    elif variant == "noise":
        grain = np.random.default_rng(0).normal(0.0, NOISE_SD, rgb.shape)   # the same grain every time
        im = Image.fromarray(np.clip(rgb + grain, 0, 255).round().astype(np.uint8))
    elif variant == "crop":
        x0, y0, x1, y1 = face_box
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 0.8 * max(x1 - x0, y1 - y0)
        im = im.crop((int(max(0, cx - half)), int(max(0, cy - half)),
                      int(min(im.width, cx + half)), int(min(im.height, cy + half))))
    else:
        raise ValueError(f"unknown portrait variant {variant!r}")
    return np.asarray(im)


def clip_variant_frames(frames, variant: str | None, reader=None):
    """frames: an iterable of (t, rgb). Yields (t, rgb) of the variant; "widemouth" and "midword" need a
    MediaPipe image-mode `reader` for the landmarks."""
    if variant is None:
        yield from frames
    elif variant == "mirror":
        for t, rgb in frames:
            yield t, np.ascontiguousarray(rgb[:, ::-1])
    elif variant == "reverse":
        items = list(frames)
        times = [t for t, _ in items]
        for t, (_, rgb) in zip(times, reversed(items)):
            yield t, rgb
    elif variant in ("grey", "dark", "rot+10"):
        for t, rgb in frames:
            yield t, portrait_variant(rgb, variant)
    elif variant == "lowres":
        for t, rgb in frames:
            yield t, _resized(rgb, LOWRES_CLIP_SIDE / max(rgb.shape[:2]))
    elif variant == "far":
        for t, rgb in frames:
            yield t, _shrunk_in_place(rgb, FAR_SCALE)
    elif variant == "noise":
        for i, (t, rgb) in enumerate(frames):
            grain = np.random.default_rng(i).normal(0.0, CLIP_NOISE_SD, rgb.shape)  # fresh, but reproducible
            yield t, np.clip(rgb + grain, 0, 255).round().astype(np.uint8)
    elif variant == "midword":
        yield from _from_widest_opening(list(frames), reader)
    elif variant == "widemouth":
        for t, rgb in frames:
            face = reader.read(rgb)
            amount = WIDE_AMOUNT * max(0.0, np.sin(2 * np.pi * t / WIDE_PERIOD_S)) ** 0.8
            yield t, rgb if face is None or amount < 0.01 else open_mouth(rgb, face.landmarks, amount)
    else:
        raise ValueError(f"unknown clip variant {variant!r}")


def _from_widest_opening(items: list, reader):
    """The clip from its widest mouth opening within MIDWORD_WITHIN_S on, re-timed to start at 0."""
    jaw = PARAM_NAMES.index("jawOpen")
    early = [(i, reader.read(rgb)) for i, (t, rgb) in enumerate(items) if t < MIDWORD_WITHIN_S]
    start = max(early, key=lambda e: -1.0 if e[1] is None else float(e[1].p[jaw]))[0]
    t0 = items[start][0]
    for t, rgb in items[start:]:
        yield t - t0, rgb


def _resized(rgb: np.ndarray, scale: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    size = (max(2, round(w * scale)) & ~1, max(2, round(h * scale)) & ~1)   # even: video encoders need it
    return np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))


def _shrunk_in_place(rgb: np.ndarray, scale: float) -> np.ndarray:
    """The frame shrunk by `scale`, centred on a canvas of its own size filled with its border's median
    colour (a flat fill: a reflected border would add mirrored faces)."""
    small = _resized(rgb, scale)
    edge = np.median(np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]), 0).astype(np.uint8)
    out = np.empty_like(rgb)
    out[:] = edge
    y, x = (rgb.shape[0] - small.shape[0]) // 2, (rgb.shape[1] - small.shape[1]) // 2
    out[y:y + small.shape[0], x:x + small.shape[1]] = small
    return out


def _arch(n: int) -> list[float]:
    """Weights of n points along a lip, 0 at the corners and 1 in the middle: the mouth opens as an oval."""
    return list(np.sin(np.pi * np.linspace(0, 1, n + 2)[1:-1]) ** 0.7)


def open_mouth(rgb: np.ndarray, landmarks: np.ndarray, amount: float) -> np.ndarray:
    """Drop the lower lip and chin by `amount` x the face height along the face's own down axis."""
    from scipy.interpolate import RBFInterpolator
    from scipy.ndimage import map_coordinates, zoom
    h, w = rgb.shape[:2]
    xy = landmarks[:, :2].astype(np.float64)
    down = xy[152] - xy[10]
    drop = amount * np.linalg.norm(down) * down / np.linalg.norm(down)
    inner = _arch(len(LOWER_INNER) - 2)
    moving = LOWER_INNER[1:-1] + LOWER_OUTER + CHIN + JAW_SIDES
    weights = inner + _arch(len(LOWER_OUTER)) + [1.0] * len(CHIN) + [0.5] * len(JAW_SIDES)
    border = [(x, y) for x in np.linspace(0, w - 1, 6) for y in (0, h - 1)] + \
             [(x, y) for y in np.linspace(0, h - 1, 6) for x in (0, w - 1)]
    src = np.concatenate([xy[STILL], xy[moving], np.array(border)])
    disp = np.concatenate([np.zeros((len(STILL), 2)), np.outer(weights, drop), np.zeros((len(border), 2))])
    # a backward map (output pixel -> where it comes from), fitted at the moved points, on a 4-px grid
    back = RBFInterpolator(src + disp, -disp, kernel="thin_plate_spline", smoothing=1.0)
    gy, gx = np.mgrid[0:h:4, 0:w:4]
    field = back(np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float64)).reshape(*gy.shape, 2)
    scale = (h / gy.shape[0], w / gy.shape[1])
    bx, by = (zoom(field[..., i], scale, order=1)[:h, :w] for i in range(2))
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.stack([map_coordinates(rgb[..., c].astype(np.float32), [yy + by, xx + bx], order=1, mode="nearest")
                    for c in range(3)], -1)
    im = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    lower = [tuple(xy[i] + drop * wt) for i, wt in zip(LOWER_INNER, [0.0] + inner + [0.0])]
    ImageDraw.Draw(im).polygon([tuple(xy[i]) for i in UPPER_INNER] + lower[::-1], fill=MOUTH_RGB)
    return np.asarray(im)


def write_portrait(rgb: np.ndarray, folder: Path, name: str) -> Path:
    """Variants are written as PNG files so the product enrolls (and caches) them like any photo."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    if not path.is_file():
        Image.fromarray(rgb).save(path)
    return path
