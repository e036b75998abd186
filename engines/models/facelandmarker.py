"""Differentiable PyTorch port of MediaPipe FaceLandmarker's networks and its landmark-tracking crop.

The weights are read from the tflite files inside `face_landmarker.task` (see engines/core/modelfiles.py)
and run by engines/models/tflite_torch.py, so the numbers are the shipped model's. Facts taken from
MediaPipe's source (tasks/cc/vision/face_landmarker/*, calculators/tensor/image_to_tensor_*,
calculators/util/{detections_to_rects,rect_transformation,landmark_projection}_calculator):

- Landmark net input: the ROI warped to 256x256 RGB, values in [0, 1] (the model metadata says
  mean 0, std 255), bilinear sampling, replicated border. Outputs 478 x (x, y, z) in crop pixels
  (z in the same pixel scale as x), a face-presence logit (MediaPipe applies a sigmoid) and a
  tongue-out probability.
- Next-frame ROI from landmarks: bounding box of all 478 points, rotation from landmark 33 to 263
  (eye corners) toward 0 degrees, made square on its long side (in pixels), scaled by 1.5.
- Blendshape net: 146 of the 478 points (x, y in image pixels), 52 scores.

ROIs are tensors [B, 5] = (centre x, centre y, width, height, rotation in radians), in pixels of the
image; the crop maps crop pixel (u, v) in [0, size]^2 to centre + R(rotation) @ ((u/size - 0.5) * width,
(v/size - 0.5) * height), exactly like MediaPipe's OpenCV crop, where image pixel i sits at coordinate i.
MediaPipe's normalized landmark (x, y, z) is (x * W, y * H, z * W) in these pixel units (see
uncrop_landmarks for one quirk of its z scale). The first ROI of a clip comes from the face detector
(engines/models/facedetector.py: FaceDetectorNet(image)[i]['rois']); later ones from `roi_from_landmarks`.
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engines.core.errors import UserError
from engines.models.tflite_torch import TFLiteModule

LANDMARK_SIZE = 256
NUM_LANDMARKS = 478
ROI_SCALE = 1.5  # RectTransformationCalculator scale_x = scale_y, square_long = true
ROTATION_START, ROTATION_END = 33, 263  # left side of left eye -> right side of right eye

# MediaPipe face_blendshapes_graph.cc kLandmarksSubsetIdxs: the 146 points the blendshape net reads.
BLENDSHAPE_LANDMARKS = (
    0, 1, 4, 5, 6, 7, 8, 10, 13, 14, 17, 21, 33, 37, 39,
    40, 46, 52, 53, 54, 55, 58, 61, 63, 65, 66, 67, 70, 78, 80,
    81, 82, 84, 87, 88, 91, 93, 95, 103, 105, 107, 109, 127, 132, 133,
    136, 144, 145, 146, 148, 149, 150, 152, 153, 154, 155, 157, 158, 159, 160,
    161, 162, 163, 168, 172, 173, 176, 178, 181, 185, 191, 195, 197, 234, 246,
    249, 251, 263, 267, 269, 270, 276, 282, 283, 284, 285, 288, 291, 293, 295,
    296, 297, 300, 308, 310, 311, 312, 314, 317, 318, 321, 323, 324, 332, 334,
    336, 338, 356, 361, 362, 365, 373, 374, 375, 377, 378, 379, 380, 381, 382,
    384, 385, 386, 387, 388, 389, 390, 397, 398, 400, 402, 405, 409, 415, 454,
    466, 468, 469, 470, 471, 472, 473, 474, 475, 476, 477,
)

# MediaPipe kBlendshapeNames, in output order ('_neutral' is always ~0 and meant to be ignored).
BLENDSHAPE_NAMES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight",
    "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
    "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight",
    "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)


def read_task_file(name: str, path: str | Path | None = None) -> bytes:
    """Bytes of one member (e.g. 'face_landmarks_detector.tflite') of the face_landmarker.task zip."""
    if path is None:
        from engines.core.modelfiles import model_path
        path = model_path("face_landmarker")
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            return z.read(name)
    except FileNotFoundError:
        raise UserError(f"face landmarker bundle not found: {path}") from None
    except KeyError:
        raise UserError(f"{path}: '{name}' missing; is this a MediaPipe face_landmarker.task?") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path}: cannot read as a .task bundle ({e})") from None


class LandmarkNet(nn.Module):
    """MediaPipe's 478-point face mesh net (v2, with irises).

    forward(img [B, 3, 256, 256] float RGB in [0, 1]) -> (landmarks [B, 478, 3] in crop pixels,
    presence [B] probability). `forward_all` also returns the tongue-out probability [B].
    """

    def __init__(self, tflite_bytes: bytes):
        super().__init__()
        self.net = TFLiteModule(tflite_bytes, nchw_inputs=True)

    @classmethod
    def from_task(cls, path: str | Path | None = None) -> "LandmarkNet":
        return cls(read_task_file("face_landmarks_detector.tflite", path)).eval()

    def forward_all(self, img: torch.Tensor):
        if img.dim() != 4 or img.shape[1:] != (3, LANDMARK_SIZE, LANDMARK_SIZE):
            raise ValueError(f"expected [B, 3, {LANDMARK_SIZE}, {LANDMARK_SIZE}], got {tuple(img.shape)}")
        lm, presence_logit, tongue = self.net(img)
        b = img.shape[0]
        return lm.reshape(b, NUM_LANDMARKS, 3), torch.sigmoid(presence_logit.reshape(b)), tongue.reshape(b)

    def forward(self, img: torch.Tensor):
        lm, presence, _ = self.forward_all(img)
        return lm, presence


class BlendshapeNet(nn.Module):
    """MediaPipe's blendshape MLP-Mixer: landmarks_xy [B, 478, 2] (image pixels) -> scores [B, 52].

    Also accepts the 146-point subset [B, 146, 2] directly. Only x/y aspect matters: the net centres
    the points and divides by their mean distance to the centre.
    """

    def __init__(self, tflite_bytes: bytes):
        super().__init__()
        self.net = TFLiteModule(tflite_bytes)
        self.register_buffer("subset", torch.tensor(BLENDSHAPE_LANDMARKS, dtype=torch.long), persistent=False)

    @classmethod
    def from_task(cls, path: str | Path | None = None) -> "BlendshapeNet":
        return cls(read_task_file("face_blendshapes.tflite", path)).eval()

    def forward(self, landmarks_xy: torch.Tensor) -> torch.Tensor:
        if landmarks_xy.dim() != 3 or landmarks_xy.shape[-1] != 2:
            raise ValueError(f"expected [B, N, 2] landmarks, got {tuple(landmarks_xy.shape)}")
        if landmarks_xy.shape[1] == NUM_LANDMARKS:
            landmarks_xy = landmarks_xy[:, self.subset]
        elif landmarks_xy.shape[1] != len(BLENDSHAPE_LANDMARKS):
            raise ValueError(f"expected {NUM_LANDMARKS} or {len(BLENDSHAPE_LANDMARKS)} landmarks, "
                             f"got {landmarks_xy.shape[1]}")
        (scores,) = self.net(landmarks_xy)
        return scores.reshape(landmarks_xy.shape[0], len(BLENDSHAPE_NAMES))


# ---- ROI: MediaPipe's landmark-tracking crop -------------------------------------------------

def _normalize_radians(a: torch.Tensor) -> torch.Tensor:
    return a - 2 * math.pi * torch.floor((a + math.pi) / (2 * math.pi))


def roi_from_landmarks(landmarks_xy: torch.Tensor, image_w: int, image_h: int) -> torch.Tensor:
    """Next-frame ROI [B, 5] (cx, cy, w, h, rotation) from landmarks [B, 478, 2] in image pixels.

    LandmarksToDetection (bounding box of all points) -> DetectionsToRects (rotation from point 33
    to 263, target angle 0) -> RectTransformation (square on the long side, scale 1.5). MediaPipe
    works in normalized coordinates; in pixels the image size cancels, so image_w/image_h are only
    checked. Differentiable except where min/max switch points.
    """
    if image_w <= 0 or image_h <= 0:
        raise ValueError("image size must be positive")
    squeeze = landmarks_xy.dim() == 2
    if squeeze:
        landmarks_xy = landmarks_xy[None]
    xy = landmarks_xy[..., :2]
    lo, hi = xy.amin(dim=1), xy.amax(dim=1)
    centre = (lo + hi) / 2
    size = (hi - lo).amax(dim=1) * ROI_SCALE
    d = xy[:, ROTATION_END] - xy[:, ROTATION_START]
    rotation = _normalize_radians(-torch.atan2(-d[:, 1], d[:, 0]))
    roi = torch.stack([centre[:, 0], centre[:, 1], size, size, rotation], dim=1)
    return roi[0] if squeeze else roi


def _roi_parts(roi: torch.Tensor):
    cx, cy, w, h, r = roi.unbind(dim=-1)
    return cx, cy, w, h, torch.cos(r), torch.sin(r)


def crop(image: torch.Tensor, roi: torch.Tensor, size: int = LANDMARK_SIZE,
         border: str = "replicate") -> torch.Tensor:
    """Warp the rotated ROI of image [B, C, H, W] to [B, C, size, size], bilinear.

    border: 'replicate' (MediaPipe's default, used for the landmark crop) or 'zero' (its detector).

    Crop pixel (j, i) samples the image at centre + R @ ((j/size - 0.5) * w, (i/size - 0.5) * h),
    as MediaPipe's OpenCV path does (it maps the ROI corners to the crop's outer corners 0 and size).
    Differentiable w.r.t. the image and the ROI.
    """
    if roi.dim() == 1:
        roi = roi[None].expand(image.shape[0], 5)
    roi = roi.to(image.dtype)
    hgt, wid = image.shape[-2:]
    cx, cy, w, h, c, s = _roi_parts(roi)
    half = 0.5 / size
    # affine_grid's output coordinate xo (align_corners=False) is pixel j at xo = (2j+1)/size - 1,
    # so j/size - 0.5 = xo/2 - half; the sampled image point x goes to grid (2x+1)/W - 1.
    ax = torch.stack([c * w / wid, -s * h / wid,
                      (2 * (cx - c * w * half + s * h * half) + 1) / wid - 1], dim=-1)
    ay = torch.stack([s * w / hgt, c * h / hgt,
                      (2 * (cy - s * w * half - c * h * half) + 1) / hgt - 1], dim=-1)
    theta = torch.stack([ax, ay], dim=1)
    grid = F.affine_grid(theta, [image.shape[0], image.shape[1], size, size], align_corners=False)
    if border not in ("replicate", "zero"):
        raise ValueError(f"border must be 'replicate' or 'zero', not {border!r}")
    mode = "border" if border == "replicate" else "zeros"
    return F.grid_sample(image, grid, mode="bilinear", padding_mode=mode, align_corners=False)


def uncrop_landmarks(lm: torch.Tensor, roi: torch.Tensor, size: int = LANDMARK_SIZE,
                     image_wh: tuple[int, int] | None = None) -> torch.Tensor:
    """Crop-space landmarks [B, N, 2 or 3] (pixels of the size x size crop) -> image pixels.

    x, y: MediaPipe's LandmarkProjection. z: by default scaled like x (w / size), the physically
    consistent pixel scale. With image_wh=(W, H), z is exactly MediaPipe's z * W instead: MediaPipe
    scales z by the length of the crop's unit x vector measured in normalized image coordinates,
    which differs from w / size when the ROI is rotated in a non-square image.
    """
    if roi.dim() == 1:
        roi = roi[None].expand(lm.shape[0], 5)
    roi = roi.to(lm.dtype)
    cx, cy, w, h, c, s = (t[:, None] for t in _roi_parts(roi))
    u = lm[..., 0] / size - 0.5
    v = lm[..., 1] / size - 0.5
    x = cx + c * w * u - s * h * v
    y = cy + s * w * u + c * h * v
    out = [x, y]
    if lm.shape[-1] > 2:
        zscale = w / size
        if image_wh is not None:
            zscale = zscale * torch.sqrt(c * c + (s * image_wh[0] / image_wh[1]) ** 2)
        out.append(lm[..., 2] * zscale)
    return torch.stack(out, dim=-1)


class FaceLandmarkerTorch(nn.Module):
    """Landmarks + presence + blendshapes for a face in a given ROI, all differentiable.

    forward(image [B, 3, H, W] RGB in [0, 1], roi [B, 5] or [5]) -> dict with
      landmarks [B, 478, 3] in image pixels, exactly MediaPipe's (x * W, y * H, z * W), presence [B], blendshapes [B, 52],
      roi_next [B, 5] (the ROI MediaPipe would track to on the next frame).
    Get a first ROI from MediaPipe's detector or from a previous frame's landmarks.
    """

    def __init__(self, landmark_net: LandmarkNet, blendshape_net: BlendshapeNet):
        super().__init__()
        self.landmark_net = landmark_net
        self.blendshape_net = blendshape_net

    @classmethod
    def from_task(cls, path: str | Path | None = None) -> "FaceLandmarkerTorch":
        return cls(LandmarkNet.from_task(path), BlendshapeNet.from_task(path)).eval()

    def forward(self, image: torch.Tensor, roi: torch.Tensor) -> dict:
        if roi.dim() == 1:
            roi = roi[None].expand(image.shape[0], 5)
        patch = crop(image, roi)
        lm_crop, presence = self.landmark_net(patch)
        hgt, wid = image.shape[-2:]
        lm = uncrop_landmarks(lm_crop, roi, image_wh=(wid, hgt))
        scores = self.blendshape_net(lm[..., :2])
        return {"landmarks": lm, "presence": presence, "blendshapes": scores,
                "roi_next": roi_from_landmarks(lm[..., :2], wid, hgt)}
