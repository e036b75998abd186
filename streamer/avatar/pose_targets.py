"""Pose targets: the avatar photo as it would look at other poses and expressions, for pivotal tuning.

Pivotal tuning on the photo alone makes G faithful at the pivot only: along the directions the tuned
default-zoo DCGAN drifts in colour, smears texture and grows checkerboards, and identity or landmark
losses optimised through networks leave adversarial fringes (issue 14). So the default zoo's
enrollment also tunes G on *targets*: for a bank of direction requests dp (each parameter alone over
its range, then combinations of the kind a driver makes), the aligned photo warped to where its
landmarks would be at p_avatar + dp. G then learns to render z + A dp as this face at that pose, with
the photo's own colours and texture; streaming still runs the paper's G(z + A dp).

  * landmarks: the avatar's 478 MediaPipe landmarks, split by calibration's linear 3D shape model
    into a similarity pose and identity + basis x blendshapes; the expression part moves by the
    requested blendshape change and the shape turns by the requested change of angles;
  * image: a thin-plate-spline warp of the crop (scipy) from the avatar's landmarks to the target
    ones, with the frame border held still; landmarks far behind the face plane (the sides of the
    head fold over in a turn) and the inner lips (they part) are not control points;
  * what a warp cannot make: an opening mouth shows the avatar's own mouth moved with the upper lip
    (teeth stay under it) over a dark interior; a closing eye is covered by the skin of its upper lid;
  * gains: a 2D warp reads as less expression than the landmarks ask for (MediaPipe judges a smile or
    an open jaw by more than point positions), so each expression's displacement is scaled by the
    inverse of the response MediaPipe reads on the first round of single-parameter targets (at most
    `gain_max`; the default zoo's is 1, no gain: a doubled jaw drop folds the chin at the crop's
    edge). Angles keep gain 1: larger synthetic turns fold the face, and the reenactor's per-avatar
    curves absorb their smaller response.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter

from calibration.shape_model import ShapeModel, to_camera
from engines.core.views import PAD, VIEW_SIZE, net3d_view, to_uint8, view_to_image_px
from engines.method.pose import rotation_from_euler
from engines.method.recipes import TargetRecipe

# MediaPipe FaceMesh indices
UPPER_INNER_LIP = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LOWER_INNER_LIP = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
OUTER_LIPS = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146]
LEFT_EYE = [33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7]
RIGHT_EYE = [362, 398, 384, 385, 386, 387, 388, 466, 263, 249, 390, 373, 374, 380, 381, 382]
BROWS = [70, 63, 105, 66, 107, 336, 296, 334, 293, 300]
# the chin and the jaw line below the mouth, and how much of the lower lip's drop each carries (the
# mandible is one bone: the chin drops at least as far as the lower lip)
CHIN = {152: 1.0, 175: 1.0, 199: 1.0, 200: 1.0, 18: 1.0, 83: 0.9, 313: 0.9, 148: 0.8, 377: 0.8,
        176: 0.6, 400: 0.6, 149: 0.4, 378: 0.4, 150: 0.2, 379: 0.2}
LEFT_LOWER_LID = [33, 7, 163, 144, 145, 153, 154, 155, 133]
RIGHT_LOWER_LID = [362, 382, 381, 380, 374, 373, 390, 249, 263]
PAIRED = (("mouthSmileLeft", "mouthSmileRight"), ("eyeBlinkLeft", "eyeBlinkRight"),
          ("browDownLeft", "browDownRight"))
# (upper lid centre, lower lid centre, brow above, eye ring, lower lid line) per eye
EYE_LIDS = ((159, 145, 105, LEFT_EYE, LEFT_LOWER_LID), (386, 374, 334, RIGHT_EYE, RIGHT_LOWER_LID))


class AvatarShape:
    """The avatar's landmarks in generator pixels, and where they go at another p."""

    def __init__(self, landmarks: np.ndarray, p: np.ndarray, shape: ShapeModel):
        self.landmarks = np.asarray(landmarks, np.float64)   # [478, 3]: x, y in pixels, z on x's scale
        self.p = np.asarray(p, np.float64)
        cam = to_camera(torch.as_tensor(self.landmarks, dtype=torch.float32))[None]
        self.canonical, self.s, self.R, self.t = shape.canonical(cam)
        self.basis = shape.basis

    @classmethod
    def from_view_reading(cls, reading, resolution: int, shape: ShapeModel) -> "AvatarShape":
        """A MediaPipe reading of the crop shown on calibration's view (engines.core.views)."""
        lm = reading.landmarks.astype(np.float64).copy()
        lm[:, :2] = view_to_image_px(lm[:, :2], resolution)
        lm[:, 2] *= (resolution + 2 * PAD) / VIEW_SIZE
        return cls(lm, reading.p, shape)

    def at(self, p_target: np.ndarray, gain: np.ndarray | None = None) -> np.ndarray:
        """[478, 2] image positions of the landmarks at p_target (expression changes scaled by `gain`)."""
        change = np.asarray(p_target, np.float64) - self.p
        if gain is not None:
            change = change * gain
        target = self.p + change
        posed = self._posed(target, np.clip(target[3:], 0.0, 1.5) - self.p[3:])
        still = self._posed(target, np.zeros(len(target) - 3))
        return self._keep_lids_apart(self._jaw_carries_chin(posed, still), still)

    def _posed(self, target: np.ndarray, expr_change: np.ndarray) -> np.ndarray:
        moved = self.canonical + torch.einsum("nde,e->nd", self.basis, torch.as_tensor(expr_change, dtype=torch.float32))
        cam = self.s.view(-1, 1, 1) * (moved @ self.R.transpose(1, 2)) + self.t.unsqueeze(1)
        turn = rotation_from_euler(target[:3]) @ rotation_from_euler(self.p[:3]).T
        centre = cam[0].mean(0)
        cam = (cam[0] - centre) @ torch.as_tensor(turn, dtype=torch.float32).T + centre
        return (cam * cam.new_tensor([1.0, -1.0, -1.0]))[:, :2].double().numpy()

    def _jaw_carries_chin(self, moved: np.ndarray, still: np.ndarray) -> np.ndarray:
        """The shape model (fitted on generated faces, few with open mouths) drops the lower lip further
        than the chin, and a wide-open mouth then spills over the chin: the chin follows the lip."""
        drop = moved[14] - still[14]
        down = self.landmarks[152, :2] - self.landmarks[10, :2]
        down = down / np.linalg.norm(down)
        for i, share in CHIN.items():
            own = moved[i] - still[i]
            if share * (drop @ down) > own @ down:
                moved[i] = still[i] + own + (share * (drop @ down) - own @ down) * down
        return moved

    def _keep_lids_apart(self, moved: np.ndarray, still: np.ndarray) -> np.ndarray:
        """The linear basis, pushed past a full blink, carries the upper lid through the lower one: each
        eye's motion is cut back to where its lids (nearly) meet."""
        down = self.landmarks[152, :2] - self.landmarks[10, :2]
        down = down / np.linalg.norm(down)
        for upper, lower, _, ring, _ in EYE_LIDS:
            gap, gap0 = (moved[lower] - moved[upper]) @ down, (still[lower] - still[upper]) @ down
            floor = 0.1 * gap0
            if gap < floor < gap0:
                keep = (gap0 - floor) / (gap0 - gap)
                idx = ring + [upper, lower]
                moved[idx] = still[idx] + keep * (moved[idx] - still[idx])
        return moved

    def control_points(self, spacing: float) -> list[int]:
        """Landmarks that steer the warp: lips, chin, eyes and brows first, then the rest, at least
        `spacing` apart; not the inner lips (they part) nor the deepest 15% (the sides of the head: they
        fold over in a turn) unless on the chin (deep when the head tips, and it must follow the jaw)."""
        xy, z = self.landmarks[:, :2], self.landmarks[:, 2]
        deep = set(np.flatnonzero(z > np.percentile(z, 85))) - set(CHIN)
        skip = set(UPPER_INNER_LIP + LOWER_INNER_LIP) | deep
        keep: list[int] = []
        for i in OUTER_LIPS + list(CHIN) + LEFT_EYE + RIGHT_EYE + BROWS + list(range(len(xy))):
            if i in skip or i in keep:
                continue
            if all(np.hypot(*(xy[i] - xy[j])) >= spacing for j in keep):
                keep.append(i)
        return keep


class Painter:
    """Warps and paints one avatar crop [1,3,R,R] in [-1,1] at generator resolution."""

    def __init__(self, crop: torch.Tensor, shape: AvatarShape, spacing: float):
        self.crop, self.shape = crop, shape
        self.R = crop.shape[-1]
        self.ctrl = shape.control_points(spacing)
        r = self.R
        edge = np.linspace(-0.5, r - 0.5, 6)
        self.border = np.array([(x, y) for x in edge for y in (-0.5, r - 0.5)] +
                               [(x, y) for y in edge[1:-1] for x in (-0.5, r - 0.5)])
        self.grid = np.stack(np.meshgrid(np.arange(r), np.arange(r)), -1).reshape(-1, 2).astype(np.float64)
        xy = shape.landmarks[:, :2]
        lips = self.colour_at(xy[[13, 14, 0, 17]].mean(0))
        self.mouth_colour = (lips + 1) * 0.25 - 1   # the lips' colour, far darker

    def sample(self, coords: np.ndarray, image: torch.Tensor | None = None) -> torch.Tensor:
        """Bilinear samples of `image` (default: the crop) at pixel coordinates [R*R, 2] -> [1,C,R,R]."""
        return self._bilinear(coords, self.crop if image is None else image, self.R)

    def colour_at(self, point: np.ndarray) -> torch.Tensor:
        """The crop's bilinear colour [1,3,1,1] at one pixel coordinate [2]."""
        return self._bilinear(point, self.crop, 1)

    def _bilinear(self, coords: np.ndarray, image: torch.Tensor, side: int) -> torch.Tensor:
        g = torch.as_tensor((coords + 0.5) / self.R * 2 - 1, dtype=torch.float32).view(1, side, side, 2)
        return F.grid_sample(image, g, mode="bilinear", padding_mode="border", align_corners=False)

    def mask(self, points: np.ndarray, blur: float) -> torch.Tensor:
        m = Image.new("L", (self.R, self.R), 0)
        ImageDraw.Draw(m).polygon([tuple(q + 0.5) for q in points], fill=255)
        if blur:
            m = m.filter(ImageFilter.GaussianBlur(blur))
        return torch.as_tensor(np.asarray(m, dtype=np.float32) / 255)[None, None]

    def __call__(self, target: np.ndarray) -> torch.Tensor:
        """The crop with its landmarks moved to `target` [478, 2]."""
        from scipy.interpolate import RBFInterpolator
        src = self.shape.landmarks[:, :2]
        c = self.ctrl
        back = RBFInterpolator(np.concatenate([target[c], self.border]), np.concatenate([src[c], self.border]),
                               kernel="thin_plate_spline", smoothing=0.3)(self.grid)
        out = self.sample(back)
        return self.close_eyes(self.open_mouth(out, src, target), src, target)

    def open_mouth(self, out, src, target):
        """The avatar's own open mouth (teeth) rides with the upper lip; what opens beyond it is dark.
        At the avatar's own pose both masks are the same hard polygon, so nothing is painted."""
        inside = self.mask(np.concatenate([target[UPPER_INNER_LIP], target[LOWER_INNER_LIP][::-1]]), 0)
        own = self.mask(np.concatenate([src[UPPER_INNER_LIP], src[LOWER_INNER_LIP][::-1]]), 0)
        moved = self.grid - (target[UPPER_INNER_LIP] - src[UPPER_INNER_LIP]).mean(0)
        teeth = self.sample(moved, own) * inside
        dark = soften((inside - teeth).clamp(min=0))
        out = out * (1 - dark) + self.mouth_colour * dark
        return out * (1 - teeth) + self.sample(moved) * teeth

    def close_eyes(self, out, src, target):
        """A closing eye is covered by the skin of its upper lid, as far as its lids have closed, and the
        lashes show as a dark line where the lids meet (a featureless eye region loses the face)."""
        down = src[152] - src[10]
        down = down / np.linalg.norm(down)
        for upper, lower, brow, ring, lid_line in EYE_LIDS:
            was, now = (src[lower] - src[upper]) @ down, (target[lower] - target[upper]) @ down
            shut = float(np.clip(1 - now / was, 0, 1)) if was > 0.3 else 0.0
            if shut < 0.05:
                continue
            lid = 0.6 * src[upper] + 0.4 * src[brow]
            skin = self.colour_at(lid)
            eye = target[ring]
            centre = eye.mean(0)
            m = self.mask(centre + 1.3 * (eye - centre), 0.5) * min(1.0, 1.5 * shut)   # lashes too
            out = out * (1 - m) + skin * m
            lashes = self.line(target[lid_line]) * (0.8 * shut)
            out = out * (1 - lashes) + ((skin + 1) * 0.4 - 1) * lashes
        return out

    def line(self, points: np.ndarray) -> torch.Tensor:
        m = Image.new("L", (self.R, self.R), 0)
        ImageDraw.Draw(m).line([tuple(q + 0.5) for q in points], fill=255, width=1)
        return torch.as_tensor(np.asarray(m.filter(ImageFilter.GaussianBlur(0.4)), dtype=np.float32) / 255)[None, None]


def soften(mask: torch.Tensor) -> torch.Tensor:
    """A [1,1,H,W] mask blurred by a 3x3 binomial kernel (an anti-aliased edge)."""
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None]) / 16
    return F.conv2d(F.pad(mask, (1, 1, 1, 1), mode="replicate"), k.view(1, 1, 3, 3))


def request_bank(p_avatar: np.ndarray, directions, recipe: TargetRecipe) -> torch.Tensor:
    """Normalised requests dp [M, K]: `levels` of each parameter alone over its range (angles within
    `angle_span` of the avatar's own, expressions over the calibrated range), then combinations: every
    angle moves (normal, sd a fifth of its span), each expression with chance `active` (sd a third),
    the right of a left/right pair mostly as its left (`paired`), as faces do."""
    rng = np.random.default_rng(recipe.seed)
    lo, hi = directions.lo.double().numpy(), directions.hi.double().numpy()
    span = np.asarray(recipe.angle_span)
    bounds = [(p_avatar[i] - span[i], p_avatar[i] + span[i]) if i < 3 else (lo[i], hi[i])
              for i in range(directions.k)]
    ps = []
    for i, (a, b) in enumerate(bounds):
        for v in np.linspace(a, b, recipe.levels):
            p = p_avatar.copy()
            p[i] = v
            ps.append(p)
    names = list(directions.param_names)
    pairs = {names.index(r): names.index(l) for l, r in PAIRED if l in names and r in names}
    while len(ps) < recipe.samples:
        p = p_avatar.copy()
        for i, (a, b) in enumerate(bounds):
            if i in pairs and rng.random() < recipe.paired:
                p[i] = p[pairs[i]]                 # both eyes blink, both corners smile
            elif i < 3 or rng.random() < recipe.active:
                p[i] = np.clip(p_avatar[i] + rng.normal(0, (b - a) / (5 if i < 3 else 3)), a, b)
        ps.append(p)
    pn = directions.normalise(torch.as_tensor(np.array(ps), dtype=torch.float32))
    return pn - directions.normalise(torch.as_tensor(p_avatar, dtype=torch.float32))


def read_targets(images: torch.Tensor, reader) -> list:
    return [reader.read(a) for a in to_uint8(net3d_view(images))]


def expression_gains(images, p_requested: np.ndarray, p_avatar: np.ndarray, levels: int, reader,
                     gain_max: float) -> np.ndarray:
    """Per parameter: 1 / (least-squares slope of the change MediaPipe reads on the single-parameter
    targets against the change asked), within [1, gain_max]; angles 1 (module doc)."""
    k = len(p_avatar)
    read = read_targets(images[:k * levels], reader)
    gain = np.ones(k)
    for i in range(3, k):
        rows = [(p_requested[j, i] - p_avatar[i], read[j].p[i] - p_avatar[i])
                for j in range(i * levels, (i + 1) * levels) if read[j] is not None]
        if len(rows) < 3:
            continue
        asked, got = np.array(rows).T
        slope = (asked * got).sum() / max((asked * asked).sum(), 1e-12)
        gain[i] = gain_max if slope <= 0 else float(np.clip(1 / slope, 1.0, gain_max))
    return gain


def pose_targets(crop: torch.Tensor, reading, directions, recipe: TargetRecipe, reader,
                 shape: ShapeModel) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """-> (dp [M, K] normalised requests, targets [M, 3, R, R] in [-1, 1], expression gains [K])."""
    avatar = AvatarShape.from_view_reading(reading, crop.shape[-1], shape)
    paint = Painter(crop, avatar, recipe.spacing)
    dps = request_bank(avatar.p, directions, recipe)
    asked = directions.denormalise(directions.normalise(torch.as_tensor(avatar.p, dtype=torch.float32)) + dps)
    asked = asked.double().numpy()
    singles = recipe.levels * directions.k
    first = torch.cat([paint(avatar.at(p)) for p in asked[:singles]])
    gain = np.ones(directions.k) if recipe.gain_max <= 1 else \
        expression_gains(first, asked, avatar.p, recipe.levels, reader, recipe.gain_max)
    gain[:3] = np.asarray(recipe.angle_gain)
    if np.all(gain == 1):   # the singles are painted already
        return dps, torch.cat([first] + [paint(avatar.at(p)) for p in asked[singles:]]), gain
    images = torch.cat([paint(avatar.at(p, gain)) for p in asked])
    return dps, images, gain


def loss_weights(reading, resolution: int, recipe: TargetRecipe) -> torch.Tensor:
    """[1,1,R,R] pixel weights: 1, plus bumps over the mouth (and the jaw below it) and the eyes."""
    xy = view_to_image_px(reading.landmarks[:, :2].astype(np.float64), resolution)
    yy, xx = torch.meshgrid(torch.arange(resolution, dtype=torch.float64),
                            torch.arange(resolution, dtype=torch.float64), indexing="ij")

    def bump(centre, sx, sy):
        return torch.exp(-(((xx - centre[0]) / sx) ** 2 + ((yy - centre[1]) / sy) ** 2))
    lips = xy[OUTER_LIPS]
    width = float(np.ptp(lips[:, 0]))
    w = 1 + (recipe.mouth_weight - 1) * bump(lips.mean(0) + [0, 0.3 * width], 0.8 * width, 0.9 * width)
    for ring in (LEFT_EYE, RIGHT_EYE):
        eye = xy[ring]
        size = float(np.ptp(eye[:, 0]))
        w = w + (recipe.eye_weight - 1) * bump(eye.mean(0), size, 0.7 * size)
    return w.float()[None, None]
