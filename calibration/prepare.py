"""Everything training needs about the statistics samples, computed once and cached.

For each sample with a face: the Net3D crop (MediaPipe's tracking ROI from the runtime's landmarks),
the PyTorch port's landmarks and blendshapes on that crop (the same instrument that will measure the
reenacted images), their canonical shape/pose under the fitted shape model, and the SFace embedding.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from calibration.identity import IdentityScorer, points_from_landmarks
from calibration.sampling import Pool
from calibration.shape_model import ShapeModel, fit_shape_model, to_camera
from engines.core.views import VIEW_SIZE, net3d_view
from engines.method.pose import EXPRESSION_INDEX, euler_from_rotation
from engines.models.face_geometry import FaceGeometry
from engines.models.facelandmarker import FaceLandmarkerTorch, roi_from_landmarks


@dataclass
class TrainData:
    z: torch.Tensor           # [N, *latent]
    p: torch.Tensor           # [N, K] runtime p (raw units)
    roi: torch.Tensor         # [N, 5] view-pixel ROI
    expr_port: torch.Tensor   # [N, E] port blendshape scores of the expression subset
    canonical: torch.Tensor   # [N, 478, 3]
    scale: torch.Tensor       # [N]
    rotation: torch.Tensor    # [N, 3, 3]
    angles: torch.Tensor      # [N, 3] yaw/pitch/roll of the port's landmarks by MediaPipe's geometry
    emb: torch.Tensor         # [N, 128] unit SFace embeddings
    shape_model: ShapeModel

    def save(self, path: Path) -> None:
        d = {k: v for k, v in self.__dict__.items() if k != "shape_model"}
        d["shape_model"] = dict(self.shape_model.__dict__)
        torch.save(d, path)

    @classmethod
    def load(cls, path: Path) -> "TrainData":
        d = torch.load(path, map_location="cpu", weights_only=True)
        d["shape_model"] = ShapeModel(**d["shape_model"])
        return cls(**d)


def port_read(landmarker: FaceLandmarkerTorch, views01: torch.Tensor, roi: torch.Tensor):
    out = landmarker(views01, roi)
    return out["landmarks"], out["blendshapes"]


@torch.no_grad()
def prepare(generator, pool: Pool, landmarker: FaceLandmarkerTorch, scorer: IdentityScorer,
            batch: int = 50, progress: bool = True, shape_model: ShapeModel | None = None) -> TrainData:
    """shape_model: measure against this one (tuning A to an avatar: the calibration's) instead of
    fitting one to the pool."""
    ok = pool.subset(pool.detected)
    n = len(ok.p)
    z = torch.as_tensor(ok.latents)
    roi = roi_from_landmarks(torch.as_tensor(ok.landmarks[..., :2]), VIEW_SIZE, VIEW_SIZE).float()
    lms, bss, embs = [], [], []
    for s in tqdm(range(0, n, batch), desc="prepare", unit="batch", disable=not progress):
        views = net3d_view(generator.synthesize(z[s:s + batch]))
        lm, bs = port_read(landmarker, views, roi[s:s + batch])
        lms.append(lm)
        bss.append(bs[:, EXPRESSION_INDEX])
        pts = points_from_landmarks(lm)
        embs.append(scorer.embed_points(views, pts))
    lms = torch.cat(lms)
    angles = euler_from_rotation(FaceGeometry()(lms, VIEW_SIZE, VIEW_SIZE))
    lm_cam = to_camera(lms)
    expr = torch.cat(bss)
    model = shape_model or fit_shape_model(lm_cam, expr)
    C, s, R, _ = model.canonical(lm_cam)
    return TrainData(z, torch.as_tensor(ok.p, dtype=torch.float32), roi, expr, C, s, R, angles,
                     torch.cat(embs), model)
