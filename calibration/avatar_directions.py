"""Tune A to one enrolled avatar (opt-in: `streamer.avatar.enroll --tune-directions`, `run_stream --tune-directions`).

A is one linear map for every face, and how far a direction moves a given face varies (calibration
probes: a matrix tuned per face is 60% below least squares on yaw/pitch where the shared one is 7-21%).
Enrollment already tunes a copy of G to the photo (pivotal tuning); this tunes a copy of A to that
avatar the same way: calibration.train's losses and Trainer, with the avatar (its tuned generator and
latent) as the only source and only single-direction rows -- one direction moved by eps from the
avatar's own pose, eps over +-a for the angles and +-2a for expressions (a driver's expression change
spans 2a). Those are the requests relative motion makes; random pool targets (tried) teach the map far
moves a driver never asks for, and it then turned the head while the driver only talked.
An expression direction the tuning weakened below the reenactor's gate gets the zoo's column back.
Needs the shape model calibration fitted (committed for the default zoo: data/default_shape_model.npz).
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
from tqdm import tqdm

from calibration.identity import IdentityScorer
from calibration.prepare import TrainData, prepare
from calibration.sampling import Pool, render_and_read
from calibration.shape_model import ShapeModel, shape_model_path
from calibration.train import TrainConfig, Trainer
from engines.core.errors import UserError
from engines.method.correction import GATE_MIN, SWEEPS
from engines.models.directions import Directions
from engines.models.facelandmarker import FaceLandmarkerTorch

STEPS, LR, BATCH, EXPR_RANGE = 200, 3e-3, 8, 2.0


def avatar_sample(G, z: torch.Tensor, shape_model: ShapeModel, landmarker: FaceLandmarkerTorch,
                  scorer: IdentityScorer) -> TrainData:
    """The avatar's render as a one-row training set, measured exactly as calibration.prepare measures
    the statistics samples (against the calibration's shape model)."""
    from engines.method.net3d import MediaPipeNet3D
    with MediaPipeNet3D("image") as net3d:
        p, lms, bss = render_and_read(G, z, net3d)
    if np.isnan(p).any():
        raise UserError("tune directions: Net3D finds no face in the avatar's own render; enroll without "
                        "--tune-directions")
    pool = Pool(z.numpy().astype(np.float32), np.ones(1, bool), p, lms, bss)
    return prepare(G, pool, landmarker, scorer, progress=False, shape_model=shape_model)


def check_supported(zoo_name: str) -> None:
    if zoo_name != "default":
        raise UserError(f"--tune-directions is calibrated for the default zoo (MediaPipe as Net3D), not '{zoo_name}'")


def tune_directions(zoo, G, z: torch.Tensor, base: Directions, steps: int = STEPS, lr: float = LR,
                    batch: int = BATCH, seed: int = 0, progress: bool = True, log=print) -> tuple[Directions, dict]:
    """A copy of `base` tuned to the avatar (G: its tuned generator, z: its latent) -> (A, report)."""
    check_supported(zoo.name)
    path = shape_model_path(zoo.name)
    if not path.is_file():
        raise UserError(f"tune directions: no shape model at {path}; run python -m calibration.train first")
    t0 = time.time()
    landmarker = FaceLandmarkerTorch.from_task().requires_grad_(False)
    scorer = IdentityScorer(zoo.param_names)
    z = z.float()
    data = avatar_sample(G, z, ShapeModel.load(path), landmarker, scorer)
    A = copy.deepcopy(base).requires_grad_(True)
    # every row: one direction from the avatar's pose
    tr = Trainer(G, data, A, landmarker, scorer, TrainConfig(lr=lr, batch=batch, seed=seed, steps=steps,
                                                             expr_range=EXPR_RANGE, single_fraction=1.0))
    losses = []
    for _ in tqdm(range(steps), desc="tune directions", unit="step", disable=not progress):
        losses.append(tr.train_step()["total"])
    A.requires_grad_(False)
    kept = keep_working_expressions(G, z, base, A)
    if kept:
        log(f"tune directions: the zoo's A kept for {', '.join(kept)} "
            f"(tuned, they no longer pass the reenactor's gate)")
    k = max(1, steps // 10)
    report = {"kept_from_zoo": kept, "steps": steps, "lr": lr, "batch": batch, "expr_range": EXPR_RANGE,
              "seed": seed,
              "loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:])),
              "seconds": round(time.time() - t0, 1)}
    log(f"tune directions: loss {report['loss_first']:.3f} -> {report['loss_last']:.3f} in {report['seconds']:.0f} s")
    return A, report


def _senses(A: Directions, probe: float) -> list[tuple[int, float]]:
    """(expression index, signed step) pairs to read: each sense at `probe`, and an expression the
    reenactor reads over a curve (SWEEPS: jawOpen) at every step of its sweep, since its curve, not a
    single probe, decides how it moves there (without expression gains in enrollment the astronaut's
    jaw opens past the gate only beyond step 4)."""
    pairs = []
    for j, name in enumerate(A.param_names[3:]):
        steps = {-probe, probe} | {float(t) for t in SWEEPS.get(name, ()) if t != 0}
        pairs += [(j, t) for t in sorted(steps)]
    return pairs


@torch.no_grad()
def expression_response(G, z: torch.Tensor, A: Directions, probe: float = 4.0) -> np.ndarray | None:
    """[2, E]: how far each expression direction moves its own parameter on this avatar, - and + senses
    (normalised units, read by the Net3D runtime; the largest over the steps `_senses` reads) -- what
    the reenactor's gates and curves measure."""
    from engines.method.net3d import MediaPipeNet3D
    k, m = A.k, A.k - 3
    pairs = _senses(A, probe)
    dps = torch.zeros(1 + len(pairs), k)
    for row, (j, t) in enumerate(pairs, start=1):
        dps[row, 3 + j] = t
    shift = A(dps) - A(torch.zeros(1, k))
    with MediaPipeNet3D("image") as net3d:
        p, _, _ = render_and_read(G, G.apply_shift(z.expand(len(dps), *z.shape[1:]), shift), net3d)
    if np.isnan(p).any():
        return None
    pn = A.normalise(torch.as_tensor(p, dtype=torch.float32)).numpy()
    out = np.full((2, m), -np.inf)
    for row, (j, t) in enumerate(pairs, start=1):
        sense = int(t > 0)
        out[sense, j] = max(out[sense, j], np.sign(t) * (pn[row, 3 + j] - pn[0, 3 + j]))
    return out


def keep_working_expressions(G, z, base: Directions, A: Directions) -> list[str]:
    """Tuning trades the expressions against the angles and identity, and on some faces it weakens an
    expression direction below the reenactor's gate (Mona Lisa: the jaw opened too little and the
    mouth stopped moving). Where the zoo's column opens its parameter past the gate in a sense and the
    tuned one does not, the zoo's column comes back. Returns the names restored."""
    rb, ra = expression_response(G, z, base), expression_response(G, z, A)
    if rb is None or ra is None:
        return []
    lost = ((rb >= GATE_MIN) & (ra < GATE_MIN)).any(0)
    names = []
    with torch.no_grad():
        for j in np.flatnonzero(lost):
            A.linear.weight[:, 3 + j] = base.linear.weight[:, 3 + j]
            names.append(A.param_names[3 + j])
    return names
