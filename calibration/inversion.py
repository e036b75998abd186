"""Inversion: a photo's face -> the generator latent that renders it (paper §3.3, the official inference's
first half). Enrollment (streamer.avatar.enroll) adds pivotal tuning on top; the paper's "mixed"
training mode (calibration.mixed) inverts real frames the same way.

  align: MediaPipe landmarks -> the zoo's square crop (of several faces, the largest, or the most
  frontal of those about as large);
  invert: the zoo's encoder when it has one, then / otherwise optimisation of pixel + identity (SFace)
  + landmark (Net3D port) losses.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from calibration.identity import IdentityScorer, points_from_landmarks
from engines.core.errors import UserError
from engines.core.views import net3d_view, to_uint8
from engines.method.align import CropRecipe, crop_box, crop_image
from engines.method.net3d import FaceReading, MediaPipeNet3D
from engines.models.facelandmarker import FaceLandmarkerTorch


def from_uint8(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1


def net3d_uint8(img: torch.Tensor) -> np.ndarray:
    """A generator-space image [1,3,R,R] in [-1,1] as the uint8 view Net3D reads."""
    return to_uint8(net3d_view(img.float()))[0]


# faces at least this share of the largest's area are rivals for enrollment, and the most frontal of
# them is enrolled: in a group of six within 25% of each other's size, the largest by a hair was turned
# 52 degrees in one version of the photo and a neighbour in the other, so mirroring the photo changed
# the person, and the turned one made a weak avatar (yaw r 0.48 on the bundled clip)
RIVAL_AREA = 0.7


def chosen_face(faces: list[FaceReading]) -> FaceReading:
    """The face to enroll among `faces` (largest first): the most frontal (least |yaw| + |pitch|) of
    those about as large as the largest."""
    rivals = [f for f in faces if f.area >= RIVAL_AREA * faces[0].area]
    return min(rivals, key=lambda f: abs(float(f.p[0])) + abs(float(f.p[1])))


class Inverter:
    def __init__(self, zoo, crop_shift_up: float | None = None, progress: bool = True, log=print,
                 on_progress=None):
        """on_progress(stage, done, total): called as the work advances (stage: 'invert' here; done/total:
        its steps), e.g. for a page's progress bar."""
        self.zoo = zoo
        self.G = zoo.generator
        self.directions = zoo.directions()
        recipe = self.directions.meta.get("crop_recipe")
        self.recipe = CropRecipe(**recipe) if recipe else CropRecipe()
        if crop_shift_up is not None:   # the zoo's recipe frames its photos its own way
            self.recipe = dataclasses.replace(self.recipe, shift_up=crop_shift_up)
        self.landmarker = FaceLandmarkerTorch.from_task().requires_grad_(False)
        self.scorer = IdentityScorer(zoo.param_names)
        self.progress = progress
        self.log = log
        self.on_progress = on_progress
        self._stages: tuple[str, ...] = ()   # a subclass's numbered stages (enrollment: align, invert, tune)

    def _stage(self, name: str) -> str:
        """Progress label of one stage: 'enroll 2/3 invert' within numbered stages, else the name."""
        if not self._stages:
            return name
        k = self._stages.index(name) + 1 if name in self._stages else 0
        return f"enroll {k}/{len(self._stages)} {name}"

    def _report(self, stage: str, done: int = 0, total: int = 0) -> None:
        if self.on_progress is not None:
            self.on_progress(stage, done, total)

    # -- 1. align ------------------------------------------------------------------------------
    def locate(self, photo: np.ndarray, name: str = "photo", net3d: MediaPipeNet3D | None = None,
               faces: list | None = None):
        """The face of `photo` to enroll (chosen_face) -> (box, crop uint8, target [1,3,R,R] in [-1,1], Net3D
        reading). net3d: an open image-mode reader (default: one of its own); faces: find_all's faces of
        this photo, when the caller has them already."""
        if net3d is None:
            with MediaPipeNet3D("image", num_faces=4) as own:
                return self.locate(photo, name, own, faces)
        faces = net3d.find_all(photo) if faces is None else faces
        if not faces:
            raise UserError(f"no face found in {name}; use a photo with one clearly visible face")
        face = chosen_face(faces)
        if len(faces) > 1:
            which = "the largest" if face is faces[0] else "the most frontal of the largest"
            self.log(f"note: {len(faces)} faces in {name}; using {which}")
        box = crop_box(face.landmarks, self.recipe)
        crop = crop_image(photo, box, self.G.resolution)
        target = from_uint8(crop)
        reading = net3d.read(net3d_uint8(target))
        if reading is None:
            raise UserError(f"the face in {name} is too small or unclear to read after alignment; "
                            "use a sharper, more frontal photo")
        return box, crop, target, reading

    # -- losses ----------------------------------------------------------------------------------
    def _losses(self, img, target, roi, lm_target, emb_target):
        view = net3d_view(img)
        out = self.landmarker(view, roi)
        lm = out["landmarks"][..., :2]
        emb = self.scorer.embed_points(view, points_from_landmarks(out["landmarks"].detach()))
        return {"pix": (img - target).abs().mean(),
                "lm": (lm - lm_target).abs().mean() / roi[:, 2].mean() * 10,
                "id": 1 - (emb * emb_target).sum(-1).mean()}

    # -- 2. invert -----------------------------------------------------------------------------
    def invert(self, target, roi, lm_target, emb_target, steps: int) -> torch.Tensor:
        G = self.G
        encoder = self.zoo.encoder()
        with torch.no_grad():
            if encoder is not None:  # e4e (paper): one pass gives W+; optimisation only refines
                x = target if target.shape[-1] == 256 else F.interpolate(
                    target, size=(256, 256), mode="bicubic", align_corners=False)  # e4e reads 256 px
                z = encoder(x).float()
            else:  # start from the best of a few hundred prior samples (low-pass pixels)
                cands = G.sample_latents(256, generator=torch.Generator().manual_seed(0))
                err = (F.avg_pool2d(G.synthesize(cands), 4) - F.avg_pool2d(target, 4)).abs().mean((1, 2, 3))
                z = cands[err.argmin()][None].clone()
        if steps <= 0:
            return z
        z.requires_grad_(True)
        opt = torch.optim.Adam([z], lr=0.03)
        dim = float(np.prod(G.latent_shape))
        for i in tqdm(range(steps), desc=self._stage("invert"), disable=not self.progress, leave=False):
            self._report("invert", i, steps)
            parts = self._losses(G.synthesize(self.pivot(z)), target, roi, lm_target, emb_target)
            loss = parts["pix"] + parts["lm"] + parts["id"]
            if encoder is None:  # z-space prior: stay on the Gaussian shell |z|^2 ~ dim
                loss = loss + (z.pow(2).sum() / dim - 1).pow(2)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return z.detach()

    def pivot(self, latent):
        """The latent G renders for this avatar at zero pose change (vox256: after truncation)."""
        return self.zoo.compose_latent(latent, None)
