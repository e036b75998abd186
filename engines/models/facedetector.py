"""MediaPipe's BlazeFace short-range face detector (the one inside face_landmarker.task) in PyTorch.

Facts from MediaPipe's tasks/cc/vision/face_detector/face_detector_graph.cc and the calculators it
configures (ssd_anchors, tensors_to_detections, non_max_suppression, detections_to_rects,
rect_transformation):
- input: the whole image letterboxed (centred square of the long side, zero border) to 128x128 RGB,
  values in [-1, 1] (metadata mean 127.5, std 127.5);
- 896 SSD anchors (4 layers, strides 8, 16, 16, 16, one aspect ratio plus one interpolated scale,
  fixed anchor size, offset 0.5): 16x16x2 + 8x8x6;
- decoding with scale 128, (x, y, w, h) order, 6 keypoints; score = sigmoid(clip(logit, +-100));
- weighted NMS (IoU): each kept box is the score-weighted mean of the boxes that overlap the best one;
- the landmark ROI: box centre, box size x 1.5 (no squaring), rotation from keypoint 0 to 1.

Everything up to the NMS selection is differentiable; the selected detections are score-weighted
means of differentiable boxes.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from engines.models.facelandmarker import _normalize_radians, crop, read_task_file
from engines.models.tflite_torch import TFLiteModule

DETECTOR_SIZE = 128
NUM_KEYPOINTS = 6
ROI_SCALE = 1.5
# FaceLandmarker's detector graph uses the proto default 0.5 for both thresholds (the stand-alone
# FaceDetector task's Python options default min_suppression_threshold to 0.3 instead).
MIN_SCORE = 0.5
MIN_SUPPRESSION = 0.5


def ssd_anchor_centres(size: int = DETECTOR_SIZE, strides=(8, 16, 16, 16), offset: float = 0.5) -> torch.Tensor:
    """[896, 2] anchor centres (x, y) in [0, 1], MediaPipe's SsdAnchorsCalculator order (fixed size)."""
    out = []
    layer = 0
    while layer < len(strides):
        last = layer
        per_cell = 0
        while last < len(strides) and strides[last] == strides[layer]:
            per_cell += 2  # one aspect ratio (1.0) + the interpolated scale
            last += 1
        fm = math.ceil(size / strides[layer])
        ys, xs = torch.meshgrid(torch.arange(fm), torch.arange(fm), indexing="ij")
        centres = torch.stack([(xs + offset) / fm, (ys + offset) / fm], dim=-1).reshape(-1, 1, 2)
        out.append(centres.expand(-1, per_cell, 2).reshape(-1, 2))
        layer = last
    return torch.cat(out).float()


def _iou(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of one (xmin, ymin, xmax, ymax) box against [N, 4] boxes."""
    lo = torch.maximum(box[:2], boxes[:, :2])
    hi = torch.minimum(box[2:], boxes[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(dim=1)
    area = (box[2:] - box[:2]).prod()
    areas = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1)
    union = area + areas - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(union))


def weighted_nms(boxes, keypoints, scores, iou_threshold: float = MIN_SUPPRESSION, max_out: int | None = None):
    """MediaPipe's WEIGHTED NMS on one image's candidates (already score-thresholded).

    boxes [N, 4] (xmin, ymin, xmax, ymax), keypoints [N, K, 2], scores [N] -> same, for the kept ones,
    sorted by score. Each output is the score-weighted mean of the candidates whose IoU with the best
    remaining one exceeds the threshold (that one included); its score is the best one's.
    """
    order = torch.argsort(scores.detach(), descending=True)
    remaining = order
    out_b, out_k, out_s = [], [], []
    while remaining.numel():
        best = remaining[0]
        overlap = _iou(boxes[best].detach(), boxes[remaining].detach()) > iou_threshold
        overlap[0] = True  # IoU with itself is 1 (guards degenerate zero-area boxes)
        members = remaining[overlap]
        w = scores[members]
        total = w.sum()
        out_b.append((boxes[members] * w[:, None]).sum(0) / total)
        out_k.append((keypoints[members] * w[:, None, None]).sum(0) / total)
        out_s.append(scores[best])
        if max_out is not None and len(out_s) >= max_out:
            break
        remaining = remaining[~overlap]
    if not out_s:
        return boxes[:0], keypoints[:0], scores[:0]
    return torch.stack(out_b), torch.stack(out_k), torch.stack(out_s)


def roi_from_detection(box: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
    """Landmark ROI [..., 5] (cx, cy, w, h, rotation) from a detection box [..., 4] (xmin, ymin, xmax,
    ymax) and keypoints [..., 6, 2], all in image pixels: box centre, size x 1.5, eye-line rotation."""
    centre = (box[..., :2] + box[..., 2:]) / 2
    size = (box[..., 2:] - box[..., :2]) * ROI_SCALE
    d = keypoints[..., 1, :] - keypoints[..., 0, :]
    rotation = _normalize_radians(-torch.atan2(-d[..., 1], d[..., 0]))
    return torch.cat([centre, size, rotation[..., None]], dim=-1)


class FaceDetectorNet(nn.Module):
    """BlazeFace short range. forward(image [B, 3, H, W] RGB in [0, 1]) -> list (one per image) of
    dicts {boxes [N, 4] (xmin, ymin, xmax, ymax), keypoints [N, 6, 2], scores [N], rois [N, 5]}, in
    image pixels, best first. `raw` and `decode` expose the network and the anchor decoding."""

    def __init__(self, tflite_bytes: bytes):
        super().__init__()
        self.net = TFLiteModule(tflite_bytes, nchw_inputs=True)
        self.register_buffer("anchors", ssd_anchor_centres(), persistent=False)

    @classmethod
    def from_task(cls, path: str | Path | None = None) -> "FaceDetectorNet":
        return cls(read_task_file("face_detector.tflite", path)).eval()

    def raw(self, x: torch.Tensor):
        """x [B, 3, 128, 128] in [-1, 1] -> (regressors [B, 896, 16], logits [B, 896])."""
        reg, cls = self.net(x)
        return reg, cls.reshape(cls.shape[0], -1)

    def decode(self, reg: torch.Tensor, logits: torch.Tensor):
        """-> boxes [B, 896, 4], keypoints [B, 896, 6, 2] in letterbox-normalized units, scores [B, 896]."""
        a = self.anchors.to(reg.dtype)
        centre = reg[..., :2] / DETECTOR_SIZE + a
        half = reg[..., 2:4] / DETECTOR_SIZE / 2
        boxes = torch.cat([centre - half, centre + half], dim=-1)
        kps = reg[..., 4:4 + 2 * NUM_KEYPOINTS].reshape(*reg.shape[:-1], NUM_KEYPOINTS, 2) / DETECTOR_SIZE
        kps = kps + a[:, None, :]
        return boxes, kps, torch.sigmoid(logits.clamp(-100, 100))

    def letterbox(self, image: torch.Tensor):
        """The detector's input [B, 3, 128, 128] in [-1, 1] and the letterbox square side S (pixels)."""
        hgt, wid = image.shape[-2:]
        side = float(max(hgt, wid))
        roi = torch.tensor([wid / 2, hgt / 2, side, side, 0.0], device=image.device, dtype=image.dtype)
        return crop(image, roi, DETECTOR_SIZE, border="zero") * 2 - 1, side

    def forward(self, image: torch.Tensor, min_score: float = MIN_SCORE,
                iou_threshold: float = MIN_SUPPRESSION, max_faces: int | None = None) -> list[dict]:
        hgt, wid = image.shape[-2:]
        x, side = self.letterbox(image)
        boxes, kps, scores = self.decode(*self.raw(x))
        # letterbox-normalized -> image pixels (square of side S centred on the image)
        off = torch.tensor([wid / 2 - side / 2, hgt / 2 - side / 2], device=image.device, dtype=boxes.dtype)
        boxes = boxes * side + off.repeat(2)
        kps = kps * side + off
        results = []
        for b in range(image.shape[0]):
            keep = scores[b] >= min_score
            bb, kk, ss = weighted_nms(boxes[b][keep], kps[b][keep], scores[b][keep], iou_threshold, max_faces)
            results.append({"boxes": bb, "keypoints": kk, "scores": ss, "rois": roi_from_detection(bb, kk)})
        return results
