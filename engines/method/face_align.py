"""5-point face alignment to the 112x112 ArcFace/SFace template (torch differentiable + numpy paths).

Coordinates: pixel-index convention (OpenCV's): pixel (i, j) has its centre at x = j, y = i. Points are
(x, y). The template is the standard ArcFace 112x112 reference (image-left eye, image-right eye, nose
tip, image-left mouth corner, image-right mouth corner), the one OpenCV's FaceRecognizerSF.alignCrop
warps to before SFace.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engines.core.views import frame_to_float

TEMPLATE_112 = np.array([[38.2946, 51.6963],   # image-left eye (the subject's right eye)
                         [73.5318, 51.5014],   # image-right eye
                         [56.0252, 71.7366],   # nose tip
                         [41.5493, 92.3655],   # image-left mouth corner
                         [70.7299, 92.2041]],  # image-right mouth corner
                        dtype=np.float32)
ALIGNED_SIZE = 112

# MediaPipe FaceLandmarker (478 points) indices. In a non-mirrored image the subject's right side is
# image-left: 468 (iris centre), 33/133 (eye corners) and 61 (mouth corner) are image-left;
# 473, 362/263 and 291 are image-right (checked on assets/astronaut.png, see tests/test_face_align.py).
MP_IRIS_CENTRES = (468, 473)
MP_EYE_CORNERS = ((33, 133), (362, 263))
MP_NOSE_TIP = 1
MP_MOUTH_CORNERS = (61, 291)


def five_points_from_mediapipe(landmarks, image_size: tuple[int, int] | None = None, eyes: str = "iris"):
    """[..., 478, >=2] MediaPipe landmarks -> [..., 5, 2] points in the template's order.

    eyes='iris' uses the iris centres (468/473), closest to the pupil-centre points of the detectors
    the template was made with; eyes='corners' uses the mean of each eye's two corners (stable when
    the gaze moves). With image_size=(W, H) the normalised [0,1] MediaPipe coordinates are turned into
    pixel-index coordinates (x * W - 0.5: MediaPipe's 0..1 spans the image edges, pixel centres sit at
    half-pixel offsets); without it the units are passed through. Works on numpy arrays and tensors.
    """
    xy = landmarks[..., :2]
    if eyes == "iris":
        e0, e1 = xy[..., MP_IRIS_CENTRES[0], :], xy[..., MP_IRIS_CENTRES[1], :]
    elif eyes == "corners":
        (a, b), (c, d) = MP_EYE_CORNERS
        e0, e1 = (xy[..., a, :] + xy[..., b, :]) / 2, (xy[..., c, :] + xy[..., d, :]) / 2
    else:
        raise ValueError(f"eyes must be 'iris' or 'corners', got {eyes!r}")
    parts = [e0, e1, xy[..., MP_NOSE_TIP, :], xy[..., MP_MOUTH_CORNERS[0], :], xy[..., MP_MOUTH_CORNERS[1], :]]
    if isinstance(xy, torch.Tensor):
        pts = torch.stack(parts, dim=-2)
        if image_size is not None:
            pts = pts * torch.tensor(image_size, dtype=pts.dtype, device=pts.device) - 0.5
    else:
        pts = np.stack(parts, axis=-2)
        if image_size is not None:
            pts = pts * np.asarray(image_size, dtype=pts.dtype) - 0.5
    return pts


def similarity_transform(src, dst):
    """Least-squares similarity (Umeyama 1991, rotation + uniform scale + translation, no reflection).

    src, dst: [..., N, 2] (numpy arrays or tensors, same kind). Returns M [..., 2, 3] with
    dst ~= src @ M[:, :2].T + M[:, 2]. In 2-D Umeyama's SVD solution has a closed form: with centred
    points and z = x + iy, the complex factor c = sum(conj(src) * dst) / sum(|src|^2) = s * e^{i theta};
    the tensor version is therefore smooth (no SVD) and differentiable in both point sets.
    """
    xp = torch if isinstance(src, torch.Tensor) else np
    mu_s, mu_d = src.mean(-2), dst.mean(-2)                               # [..., 2]
    s, d = src - mu_s[..., None, :], dst - mu_d[..., None, :]
    var = (s ** 2).sum((-2, -1))
    a = (s * d).sum((-2, -1)) / var                                     # scale * cos(theta)
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(-1) / var   # scale * sin(theta)
    R = xp.stack([xp.stack([a, -b], -1), xp.stack([b, a], -1)], -2)     # [..., 2, 2]
    t = mu_d - (R @ mu_s[..., None])[..., 0]
    return (np.concatenate if xp is np else torch.cat)([R, t[..., None]], -1)


def _template(size: int, dtype, device=None):
    tpl = TEMPLATE_112 * (size / ALIGNED_SIZE)
    return torch.as_tensor(tpl, dtype=dtype, device=device) if device is not None else tpl.astype(dtype)


def _invert_affine(M):
    """[..., 2, 3] affine -> its inverse (output pixel -> input pixel)."""
    xp = torch if isinstance(M, torch.Tensor) else np
    A, t = M[..., :2], M[..., 2:]
    Ai = xp.linalg.inv(A)
    return (np.concatenate if xp is np else torch.cat)([Ai, -Ai @ t], -1)


def align_112(image: torch.Tensor, five_points: torch.Tensor, size: int = ALIGNED_SIZE) -> torch.Tensor:
    """Differentiable warp: image [B,C,H,W] float, five_points [B,5,2] (pixel-index x,y) -> [B,C,size,size].

    Bilinear, zeros outside the image (like cv2.warpAffine's default border). Gradients flow to the
    image and to the points. size != 112 scales the template (e.g. 224 for a larger crop).
    """
    B, _, H, W = image.shape
    pts = five_points.to(image.dtype if image.is_floating_point() else torch.float32)
    M = similarity_transform(pts, _template(size, pts.dtype, pts.device).expand(B, 5, 2))
    Minv = _invert_affine(M)  # output pixel -> input pixel
    # affine_grid (align_corners=False) works in normalised coords u = (2x + 1) / W - 1
    def norm(w, h):
        return torch.tensor([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]],
                            dtype=pts.dtype, device=pts.device)
    out_to_px = torch.linalg.inv(norm(size, size))
    Minv3 = torch.cat([Minv, torch.tensor([[[0, 0, 1]]], dtype=pts.dtype, device=pts.device).expand(B, 1, 3)], 1)
    theta = (norm(W, H) @ Minv3 @ out_to_px)[:, :2]
    grid = F.affine_grid(theta, [B, image.shape[1], size, size], align_corners=False)
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def align_112_np(image: np.ndarray, five_points: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """numpy path: image [H,W,C] (uint8 or float), five_points [5,2] -> [size,size,C] of the same dtype.

    Same sampling as align_112 (bilinear, zeros outside), computed in float64; uint8 is rounded.
    """
    H, W = image.shape[:2]
    Minv = _invert_affine(similarity_transform(np.asarray(five_points, np.float64),
                                               _template(size, np.float64)))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = Minv[0, 0] * xs + Minv[0, 1] * ys + Minv[0, 2]
    sy = Minv[1, 0] * xs + Minv[1, 1] * ys + Minv[1, 2]
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    img = image.reshape(H, W, -1).astype(np.float64)
    out = np.zeros((size, size, img.shape[2]), np.float64)
    for dy, dx, w in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        ok = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
        out += np.where(ok[..., None], img[yi.clip(0, H - 1), xi.clip(0, W - 1)], 0.0) * w
    out = out.reshape(size, size, *image.shape[2:])
    if image.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(image.dtype)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [H,W,3] or [B,H,W,3] RGB -> float [B,3,H,W] in [0,1] (the input SFace.forward wants)."""
    a = np.asarray(images)
    a = a[None] if a.ndim == 3 else a
    return frame_to_float(torch.from_numpy(np.array(a)))  # copy: input may be read-only
