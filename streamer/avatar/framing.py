"""The published frame: the avatar's face render inside the photo's own head-and-shoulders surroundings.

The generator renders a tight square around the face (the default zoo: 64 px). Shown alone and upscaled
it fills the whole frame: the face detectors of video-call apps (and MediaPipe) find such faces less
often, it looks unlike a webcam, and every pixel of it is the soft 64-px render. So enrollment keeps a
wider crop of the photo (`DISPLAY_SCALE` x the generator's square, same centre), and each frame's render
is pasted into its centre with a feathered edge: hair, shoulders and background stay the photo's own,
sharp and still. The generator's frame border is held still by the pose targets (streamer.avatar.pose_targets),
so the seam does not move. The driver's roll turns the head in the finished frame (HeadTurn).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

import torch
import torch.nn.functional as F

try:   # MediaPipe's own dependency; an image without MediaPipe (the GPU one) turns with torch instead
    import cv2
except ImportError:
    cv2 = None

from engines.method.align import crop_image

DISPLAY_SCALE = 1.6    # the published frame spans this many generator squares
OUT_SIZE = 256         # the published frame's side in pixels
FEATHER = 0.12         # the paste fades out over this outer share of the square's half-width
# The driver's roll turns the head: fully inside this ellipse (centre and semi-axes as shares of the
# generator's square, where alignment puts every face), fading out over HEAD_FADE of its radius beyond
HEAD_CENTRE = (0.5, 0.55)
HEAD_AXES = (0.44, 0.50)
HEAD_FADE = 0.5
# where the surroundings reach past a tightly cropped photo's edge, its edge pixels run on as stripes:
# there they blur into the photo's colours, lightly within FILL_NEAR x the frame's side of the edge and
# more as they go (sigma FILL_NEAR_BLUR, then FILL_BLUR x the side, reached FILL_FEATHER beyond it)
FILL_NEAR = 1 / 64
FILL_NEAR_BLUR = 1 / 24
FILL_BLUR = 1 / 5
FILL_FEATHER = 1 / 8


# landmarks of the face's vertical midline (MediaPipe's mesh: forehead, nose bridge, nose tip, upper and
# lower lip, chin): a face cut by the photo's side is mirrored about their mean x (mirror_half)
MIDLINE = (10, 168, 1, 0, 17, 152)
MIRROR_FADE = 0.1


def mirror_half(photo: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The photo widened where the face's landmarks run past its left or right edge, by one face width
    on that side, the missing part filled with the face's own other half mirrored about its midline
    (faces are near symmetric); the photo itself when the face is whole. Repeating the edge column
    there instead drew the cut face's half as a smear, and its avatar could hardly turn toward the
    cut (a smiling man cut through the cheek: yaw r 0.47 on the bundled clip)."""
    w = photo.shape[1]
    x0, x1 = float(landmarks[:, 0].min()), float(landmarks[:, 0].max())
    if x0 >= 0 and x1 <= w:
        return photo
    mid = float(np.mean(landmarks[list(MIDLINE), 0]))
    width = x1 - x0
    left = int(np.ceil(width)) if x0 < 0 else 0
    right = int(np.ceil(width)) if x1 > w else 0
    cols = np.arange(-left, w + right)
    mirrored = photo[:, np.clip(np.rint(2 * mid - cols).astype(int), 0, w - 1)].astype(np.float32)
    own = photo[:, np.clip(cols, 0, w - 1)].astype(np.float32)
    # 1 inside the photo, falling to 0 at a cut edge over MIRROR_FADE of the face's width (the two
    # halves' lighting differs: a hard join showed as a seam down the cheek)
    fade = max(MIRROR_FADE * width, 1.0)
    inside = np.minimum(cols + 1 if left else np.inf, w - cols if right else np.inf)
    weight = np.clip(inside / fade, 0.0, 1.0)[None, :, None]
    return np.ascontiguousarray(np.rint(weight * own + (1 - weight) * mirrored).astype(np.uint8))


# how much each other face's landmark box grows before it is blurred, and the blur (sigma) as a share
# of the widest such box: enough that MediaPipe no longer finds a face there
HIDE_MARGIN = 0.25
HIDE_BLUR = 0.2


def others_hidden(photo: np.ndarray, boxes: list) -> np.ndarray:
    """The photo with the face boxes (x0, y0, x1, y1) of the people around the avatar blurred, with a
    soft edge. In a group photo they stood in the published frame as faces, and a reader that takes
    the largest face it finds (MediaPipe; a call's face tracker) could take theirs for the avatar."""
    if not boxes:
        return photo
    h, w = photo.shape[:2]
    mask = Image.new("L", (w, h), 0)
    width = max(x1 - x0 for x0, _, x1, _ in boxes)
    for x0, y0, x1, y1 in boxes:
        mx, my = HIDE_MARGIN * (x1 - x0), HIDE_MARGIN * (y1 - y0)
        mask.paste(255, (int(x0 - mx), int(y0 - my), int(x1 + mx), int(y1 + my)))
    radius = max(HIDE_BLUR * width, 1.0)
    soft = np.asarray(mask.filter(ImageFilter.GaussianBlur(radius / 2)), np.float32)[..., None] / 255
    blurred = np.asarray(Image.fromarray(photo).filter(ImageFilter.GaussianBlur(radius)), np.float32)
    return np.rint(photo * (1 - soft) + blurred * soft).astype(np.uint8)


def square_mask(side: int, feather: float) -> np.ndarray:
    """[side, side] 1 inside, fading linearly to 0 over the outer `feather` of the half-width on every
    side (a square, not a disc: the chin sits near the bottom edge and must not fade)."""
    r = np.abs((np.arange(side) + 0.5) / side * 2 - 1)
    d = np.maximum(r[None, :], r[:, None])
    return np.clip((1.0 - d) / feather, 0.0, 1.0)


def face_square(size: int, scale: float) -> tuple[int, int]:
    """(offset, side) in pixels of the generator's square inside a published frame of `size`."""
    side = int(round(size / scale))
    return (size - side) // 2, side


def surroundings(photo: np.ndarray, box, scale: float, size: int) -> np.ndarray:
    """The photo around the generator's box (cx, cy, side): `scale` x its side, size x size uint8.
    Past the photo's edge (a portrait cropped at the shoulders: 17% of the frame for a 512-px
    expression-database photo; a head filling the photo: all four sides) the edge pixels run on as
    stripes; there they blur into a soft continuation of the photo instead."""
    cx, cy, side = (float(v) for v in box)
    span = side * scale
    out = crop_image(photo, (cx, cy, span), size)
    h, w = photo.shape[:2]
    at = (np.arange(size) + 0.5) * span / size - span / 2      # pixel centres, photo units from the centre
    past_x = np.maximum(np.maximum(-(cx + at), cx + at - w), 0.0)
    past_y = np.maximum(np.maximum(-(cy + at), cy + at - h), 0.0)
    past = np.maximum(past_x[None, :], past_y[:, None]) * size / span   # frame pixels beyond the edge
    if not past.any():
        return out
    out = out.astype(np.float32)
    for blur, reach in ((FILL_NEAR_BLUR, FILL_NEAR), (FILL_BLUR, FILL_FEATHER)):
        weight = np.clip(past / (reach * size), 0.0, 1.0)[..., None]
        blurred = Image.fromarray(out.round().astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur * size))
        soft = np.asarray(blurred, np.float32)
        out = out + (soft - out) * weight
    return out.round().astype(np.uint8)


class Framer:
    def __init__(self, display: np.ndarray, scale: float, size: int):
        """display: the pack's surroundings (what `surroundings` made at enrollment)."""
        self.size = size
        self.scale = scale
        if scale > 1:
            self.background = np.asarray(Image.fromarray(display).resize((size, size), Image.BICUBIC),
                                         dtype=np.float32)
            self.offset, self.side = face_square(size, scale)
            self.head_turn = HeadTurn(size, self.offset, self.side)
            self.mask = square_mask(self.side, FEATHER)[..., None].astype(np.float32)
            # only the face square changes from frame to frame: the rest is copied as it is (a third
            # of the work of blending the whole frame in float, the same bytes)
            o, s = self.offset, self.side
            self._frame = self.background.round().astype(np.uint8)
            self._under = self.background[o:o + s, o:o + s].copy()
        else:   # packs enrolled before the wider crop: the render fills the frame
            self.offset, self.side = 0, size
            self.head_turn = HeadTurn(size, 0, size)

    def __call__(self, face: np.ndarray, roll: float = 0.0) -> np.ndarray:
        """face: the render as uint8 HxWx3 (any size) -> the published frame, uint8 size x size x 3,
        with the head turned `roll` degrees (counter-clockwise) about its square's centre (HeadTurn)."""
        if face.shape[0] != self.side:
            face = np.asarray(Image.fromarray(face).resize((self.side, self.side), Image.BICUBIC))
        if self.scale > 1:
            out = self._frame.copy()
            o, s = self.offset, self.side
            under = self._under
            out[o:o + s, o:o + s] = (under + (face.astype(np.float32) - under) * self.mask).round()
            face = out
        return self.head_turn(face, roll) if roll else face


class HeadTurn:
    """The published frame with the head turned `roll` degrees (counter-clockwise) about the face
    square's centre, the turn fading out beyond the head: every pixel turns by roll x weight, the weight
    1 over the head (an ellipse about the face in the generator's square, HEAD_AXES) and falling
    smoothly to 0 over HEAD_FADE beyond it, so hair, neck and collar bend a little and the frame's
    corners stay. A continuous warp: turning the face square alone cut the hair, the collar and the
    square's corners with hard edges where it met the photo's still surroundings, and blending a turned
    head into the still square drew them twice."""

    def __init__(self, size: int, offset: int, side: int):
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        self.centre = (size - 1) / 2                      # the square's centre (it sits in the middle)
        (hx, hy), (ax, ay) = HEAD_CENTRE, HEAD_AXES
        d = np.hypot(((xs + 0.5 - offset) / side - hx) / ax, ((ys + 0.5 - offset) / side - hy) / ay)
        t = np.clip((1 + HEAD_FADE - d) / HEAD_FADE, 0.0, 1.0)
        weight = t * t * (3 - 2 * t)                      # smoothstep: no kink where the turn starts to fade
        rows, cols = np.nonzero(weight.any(1))[0], np.nonzero(weight.any(0))[0]
        self.box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))   # only these pixels move
        self.weight = weight[self.box]
        self.dx, self.dy = xs[self.box] - self.centre, ys[self.box] - self.centre

    def sources(self, roll: float) -> tuple[np.ndarray, np.ndarray]:
        """Where each pixel of the box takes its colour from (x, y float32 frame coordinates)."""
        turn = np.float32(np.deg2rad(roll)) * self.weight
        cos, sin = np.cos(turn), np.sin(turn)
        return self.centre + cos * self.dx - sin * self.dy, self.centre + sin * self.dx + cos * self.dy

    def __call__(self, frame: np.ndarray, roll: float) -> np.ndarray:
        out = frame.copy()
        x, y = self.sources(roll)
        if cv2 is not None:   # OpenCV where it imports: the framer 0.9 ms a frame with it, 1.8 with torch
            out[self.box] = cv2.remap(frame, x, y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
            return out
        size = frame.shape[0]
        grid = torch.from_numpy(np.stack([x, y], -1) / (size - 1) * 2 - 1)[None]
        img = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
        moved = F.grid_sample(img, grid, mode="bicubic", padding_mode="border", align_corners=True)
        out[self.box] = moved[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
        return out


def generator_view(frame: np.ndarray, scale: float) -> np.ndarray:
    """The generator's square cut back out of a published frame, at the frame's size (the crop frame
    evaluations compare with a driver's crop)."""
    if scale <= 1:
        return frame
    o, s = face_square(frame.shape[0], scale)
    return np.asarray(Image.fromarray(frame[o:o + s, o:o + s]).resize(frame.shape[:2][::-1], Image.BICUBIC))
