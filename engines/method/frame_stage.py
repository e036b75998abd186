"""The per-frame model stage as one batchable, graph-capturable module (static shapes, no host syncs).

vox256 (the paper's Net3D path), per frame:
    landmark-port tracking crop (ROI from the previous frame's landmarks) -> 478 landmarks
    -> DECA crop 224 (DECA's 68-point box rule on the matching MediaPipe points) -> DecaEncoder
    -> p (15, the paper's normalisation) -> A(p - p_ref) -> official latent (psi 0.7) -> StyleGAN2
default zoo, per frame:
    landmark-port tracking crop -> landmarks + blendshapes -> MediaPipe's face-geometry pose
    -> p (yaw, pitch, roll, expression blendshapes) -> A(norm(p) - p_ref) -> z + shift -> DCGAN

Inputs (all batched, shapes fixed per engine): frame uint8 [B, H, W, 3] (RGB, as captured: 4x fewer
bytes to upload than float), roi [B, 5] (cx, cy, w, h, rotation; image pixels), the session's source
code (W+ [B, 14, 512] or z [B, 100]), p_ref [B, K] (normalised: the avatar's own p for the official
absolute mode, or the driver's neutral p for relative motion) and slot [B] (the avatar's weights in
the AvatarBank; 0 = untuned). Outputs (dict): image uint8 [B, R, R, 3], presence [B], roi_next [B, 5]
(the tracking ROI for the next frame), p [B, K] (normalised). Face detection is NOT in the stage: a
session runs the detector port only when tracking is lost (`FaceTracker`), off the batched path.

Precision: `with_precision(dtype)` returns a view of the same weights running the landmark net and
DECA under autocast and StyleGAN2's top blocks in fp16 (engines.accel.avatar_batch); p, the direction
map and the latent arithmetic stay fp32.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from engines.accel.avatar_batch import AvatarBank, DCGANBatch, StyleGAN2Batch
from engines.core.views import image_uint8
from engines.method import default_zoo, vox256
from engines.method.pose import EXPRESSION_INDEX, euler_from_rotation
from engines.method.reenact_latent import OFFICIAL_PSI
from engines.models.deca import ANGLE_SCALES, N_EXP, SHIFT_SCALE, axis_angle_to_euler, range_coefficients, split_params
from engines.models.facelandmarker import LANDMARK_SIZE, crop, roi_from_landmarks, uncrop_landmarks

DECA_SIZE = 224
# MediaPipe points that outline the extent of the 68-point annotation DECA's crop is defined on:
# the lower face oval (ear to ear through the chin) and both eyebrows.
DECA_BOX_LANDMARKS = (234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397,
                      288, 361, 323, 454, 70, 63, 105, 66, 107, 336, 296, 334, 293, 300)
DECA_BOX_SCALE = 1.1 * 1.25  # DECA TestData, kpt68 box: mean side x 1.1, crop side x 1.25
MIN_PRESENCE = 0.5  # MediaPipe's default min_tracking_confidence


def deca_roi(landmarks_xy: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """[B, 478, >=2] image-pixel landmarks -> DECA's square crop ROI [B, 5] (no rotation).
    `index`: DECA_BOX_LANDMARKS as a tensor on the landmarks' device (a Python list would be copied
    to the device on every call, which a CUDA graph capture forbids)."""
    if index is None:
        index = torch.tensor(DECA_BOX_LANDMARKS, device=landmarks_xy.device)
    pts = landmarks_xy[:, index, :2]
    lo, hi = pts.amin(dim=1), pts.amax(dim=1)
    centre = (lo + hi) / 2
    side = (hi - lo).sum(dim=1) / 2 * DECA_BOX_SCALE
    return torch.stack([centre[:, 0], centre[:, 1], side, side, torch.zeros_like(side)], dim=1)


def frame_to_float(frame_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [0, 1]."""
    return frame_u8.permute(0, 3, 1, 2).float() / 255.0


class FrameStage(nn.Module):
    precision = torch.float32

    def with_precision(self, dtype: torch.dtype) -> "FrameStage":
        """Same weights, reduced precision where it is safe (see module doc)."""
        view = copy.copy(self)
        view.precision = dtype
        return view

    def _autocast(self, device_type: str):
        on = self.precision != torch.float32
        # no weight-cast cache: CUDA graph capture needs the casts inside the graph
        return torch.autocast(device_type=device_type, dtype=self.precision if on else torch.bfloat16, enabled=on,
                              cache_enabled=False)

    @property
    def half(self):
        return None if self.precision == torch.float32 else self.precision

    def example_inputs(self, batch: int, device, frame_hw: tuple[int, int], seed: int = 0) -> tuple:
        """Plausible inputs of the right shapes (a centred ROI, random frame and code)."""
        raise NotImplementedError


class VoxFrameStage(FrameStage):
    def __init__(self, landmark_net, deca, ranges, directions, generator, trunc: torch.Tensor,
                 slots: int = 8, psi: float = OFFICIAL_PSI, half_blocks: int = 4):
        super().__init__()
        self.landmarks = landmark_net
        self.deca = deca
        self.directions = directions
        self.bank = AvatarBank(generator, vox256.RECIPE.tuning.layers, slots)
        self.synth = StyleGAN2Batch(generator, self.bank, half_blocks)
        a, b = range_coefficients(ranges)
        self.register_buffer("p_a", torch.tensor(a, dtype=torch.float32), persistent=False)
        self.register_buffer("p_b", torch.tensor(b, dtype=torch.float32), persistent=False)
        self.register_buffer("angle_scale", torch.tensor([SHIFT_SCALE / s for s in ANGLE_SCALES]), persistent=False)
        self.register_buffer("trunc", torch.as_tensor(trunc, dtype=torch.float32).reshape(1, 1, -1), persistent=False)
        self.register_buffer("deca_index", torch.tensor(DECA_BOX_LANDMARKS), persistent=False)
        self.psi = float(psi)
        self.k = 15
        self.source_shape = tuple(generator.latent_shape)

    def p_from_deca(self, pose: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
        """= engines.models.deca.deca_p, with the range coefficients as buffers (no host tensors per call)."""
        angles = axis_angle_to_euler(pose[:, :3]) * self.angle_scale
        lin = torch.cat([pose[:, 3:4], exp[:, :N_EXP]], dim=1) * self.p_a + self.p_b
        return torch.cat([angles, lin], dim=1)

    def forward(self, frame: torch.Tensor, roi: torch.Tensor, w_source: torch.Tensor, p_ref: torch.Tensor,
                slot: torch.Tensor) -> dict[str, torch.Tensor]:
        img = frame_to_float(frame)
        hgt, wid = img.shape[-2:]
        with self._autocast(img.device.type):
            lm_crop, presence = self.landmarks(crop(img, roi, LANDMARK_SIZE))
        lm = uncrop_landmarks(lm_crop.float()[..., :2], roi)
        with self._autocast(img.device.type):
            code = self.deca.encode_raw(crop(img, deca_roi(lm, self.deca_index), DECA_SIZE))
        params = split_params(code.float())
        p = self.directions.normalise(self.p_from_deca(params["pose"], params["exp"]))
        shift = self.directions(p - p_ref)
        k = shift.shape[1]
        w = torch.cat([w_source[:, :k] + shift, w_source[:, k:]], dim=1)
        w = self.trunc + self.psi * (w - self.trunc)
        image = self.synth(w, slot, self.half)
        return {"image": image_uint8(image), "presence": presence.float(),
                "roi_next": roi_from_landmarks(lm, wid, hgt), "p": p}

    def example_inputs(self, batch, device, frame_hw=(480, 640), seed=0):
        g = torch.Generator().manual_seed(seed)
        h, w = frame_hw
        frame = torch.randint(0, 256, (batch, h, w, 3), generator=g, dtype=torch.uint8)
        roi = torch.tensor([w / 2, h / 2, h * 0.6, h * 0.6, 0.0]).repeat(batch, 1)
        lat = self.trunc.reshape(1, 1, -1).cpu() + 0.3 * torch.randn(batch, self.synth.g.n_latent, 512, generator=g)
        p_ref = torch.randn(batch, self.k, generator=g)
        slot = torch.arange(batch) % self.bank.slots
        return tuple(t.to(device) for t in (frame, roi, lat, p_ref, slot))


class DefaultFrameStage(FrameStage):
    def __init__(self, landmarker, geometry, directions, generator, slots: int = 8):
        super().__init__()
        self.landmarker = landmarker  # FaceLandmarkerTorch (landmarks + blendshapes + next ROI)
        self.geometry = geometry      # engines.models.face_geometry.FaceGeometry
        self.directions = directions
        self.bank = AvatarBank(generator, default_zoo.RECIPE.tuning.layers, slots)
        self.synth = DCGANBatch(generator, self.bank)
        self.register_buffer("expr_index", torch.tensor(EXPRESSION_INDEX), persistent=False)
        self.k = 3 + len(EXPRESSION_INDEX)
        self.source_shape = (100,)

    def forward(self, frame, roi, z_source, p_ref, slot):
        img = frame_to_float(frame)
        hgt, wid = img.shape[-2:]
        with self._autocast(img.device.type):
            out = self.landmarker(img, roi)
        lm = out["landmarks"].float()
        rot = self.geometry(lm, wid, hgt)
        p_raw = torch.cat([euler_from_rotation(rot), out["blendshapes"].float()[:, self.expr_index]], dim=1)
        p = self.directions.normalise(p_raw)
        z = z_source + self.directions(p - p_ref).reshape(z_source.shape)
        image = self.synth(z, slot, self.half)
        return {"image": image_uint8(image), "presence": out["presence"].float(),
                "roi_next": out["roi_next"].float(), "p": p}

    def example_inputs(self, batch, device, frame_hw=(480, 640), seed=0):
        g = torch.Generator().manual_seed(seed)
        h, w = frame_hw
        frame = torch.randint(0, 256, (batch, h, w, 3), generator=g, dtype=torch.uint8)
        roi = torch.tensor([w / 2, h / 2, h * 0.6, h * 0.6, 0.0]).repeat(batch, 1)
        z = torch.randn(batch, 100, generator=g)
        p_ref = torch.randn(batch, self.k, generator=g)
        slot = torch.arange(batch) % self.bank.slots
        return tuple(t.to(device) for t in (frame, roi, z, p_ref, slot))


class FaceTracker:
    """One session's face ROI: track from the previous frame's landmarks; run the detector port only
    when there is no ROI (first frame, or presence fell below MIN_PRESENCE)."""

    def __init__(self, detector=None, min_presence: float = MIN_PRESENCE):
        self.detector = detector
        self.min_presence = min_presence
        self.roi: torch.Tensor | None = None
        self.detections = 0

    @torch.no_grad()
    def roi_for(self, frame_u8: torch.Tensor) -> torch.Tensor | None:
        """frame uint8 [H, W, 3] (on the detector's device) -> ROI [5], or None when no face is found."""
        if self.roi is not None:
            return self.roi
        if self.detector is None:
            return None
        self.detections += 1
        found = self.detector(frame_to_float(frame_u8[None]), max_faces=1)[0]
        if found["rois"].shape[0] == 0:
            return None
        self.roi = found["rois"][0].float()
        return self.roi

    def update(self, presence: float, roi_next: torch.Tensor) -> bool:
        """After the stage ran: keep tracking, or drop the ROI so the next frame re-detects."""
        ok = presence >= self.min_presence and bool(torch.isfinite(roi_next).all())
        self.roi = roi_next if ok else None
        return ok


# -- builders ----------------------------------------------------------------------------------------
def build_vox256_stage(weights: dict, device="cpu", slots: int = 8, task_path=None) -> VoxFrameStage:
    """weights: {'generator', 'deca', 'directions', 'ranges'} paths (registry names of engines.weights.files)."""
    from engines.models.deca import DecaEncoder, load_ranges
    from engines.models.directions import Directions
    from engines.models.facelandmarker import LandmarkNet
    from engines.models.stylegan2 import StyleGAN2
    g = StyleGAN2.from_checkpoint(weights["generator"])
    trunc = g.latent_avg if g.latent_avg is not None else g.mean_latent(4096, torch.Generator().manual_seed(0))
    stage = VoxFrameStage(LandmarkNet.from_task(task_path), DecaEncoder.from_checkpoint(weights["deca"]),
                          load_ranges(weights["ranges"]), Directions.from_checkpoint(weights["directions"]),
                          g, trunc, slots=slots)
    return stage.eval().requires_grad_(False).to(device)


def build_vox256_random_stage(workdir, size: int = 256, device="cpu", slots: int = 8, seed: int = 0) -> VoxFrameStage:
    """Random-weight official-size files (engines.weights.random_weights) -> stage; runs without user weights."""
    from engines.weights.random_weights import write_random_vox256
    paths = write_random_vox256(workdir, size=size, seed=seed, include=("generator", "deca", "directions", "ranges"))
    return build_vox256_stage(paths, device, slots)


def build_default_stage(device="cpu", slots: int = 8, directions=None, task_path=None) -> DefaultFrameStage:
    """The default zoo's stage; `directions` None -> the committed file, or random ones when it is
    missing (speed measurements only)."""
    from engines.method.default_zoo import default_directions_path
    from engines.method.pose import PARAM_NAMES
    from engines.models.dcgan import DCGAN
    from engines.models.directions import Directions
    from engines.models.face_geometry import FaceGeometry
    from engines.models.facelandmarker import FaceLandmarkerTorch
    if directions is None:
        path = default_directions_path()
        if path.is_file():
            directions = Directions.from_checkpoint(path, expect_zoo="default", expect_params=list(PARAM_NAMES))
        else:
            torch.manual_seed(0)
            directions = Directions(len(PARAM_NAMES), (100,), param_names=list(PARAM_NAMES), zoo="default",
                                    meta={"random": True})
    stage = DefaultFrameStage(FaceLandmarkerTorch.from_task(task_path), FaceGeometry(task_path), directions,
                              DCGAN.from_checkpoint(), slots=slots)
    return stage.eval().requires_grad_(False).to(device)

