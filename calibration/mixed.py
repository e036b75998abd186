"""Real frames for the paper's "mixed" training mode (`python -m calibration.train --mixed CLIP|DIR`).

The paper trains A on random latents (synthetic) or on a 50/50 mix with latents of real frames
inverted into the generator (mixed). Here: N frames (evenly spaced over a clip, or the images of a
folder) are aligned and inverted exactly as avatar enrollment does (calibration.inversion.Inverter: crop,
then optimisation of pixel + landmark + identity losses, no generator tuning, since A acts on G's own
latent space); each inverted latent is rendered and read by the Net3D runtime like the statistics
pool, so the training step treats it like any other sample. The result is cached next to the pool.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from calibration.identity import points_from_landmarks
from calibration.inversion import Inverter
from calibration.sampling import Pool, render_and_read
from engines.core.errors import UserError
from engines.core.files import IMAGE_SUFFIXES
from engines.core.frames import clip_rgb, frame_count
from engines.core.photo import read_photo
from engines.core.views import VIEW_SIZE, net3d_view
from engines.method.net3d import MediaPipeNet3D
from engines.models.facelandmarker import roi_from_landmarks


def real_frames(source: str | Path, n: int) -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8) for n frames evenly spaced over a clip, or the first n images of a folder."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:n]
        return [(p.name, read_photo(p)) for p in files]
    if not source.is_file():
        raise UserError(f"--mixed {source}: no such clip or folder")
    label = "--mixed "
    total = frame_count(source, label)
    picks = set(np.linspace(0, max(total - 1, 0), n).round().astype(int).tolist()) if total else None
    out = []
    for i, _, rgb in clip_rgb(source, None, label):
        if picks is None or i in picks:
            out.append((f"{source.name}#{i}", rgb))
        if len(out) >= n:
            break
    return out


def inverted_pool(zoo, source: str | Path, run: Path, n: int = 32, steps: int = 40,
                  progress: bool = True, log=print) -> Pool:
    """The inverted real frames as a Pool (only frames whose rendering Net3D reads), cached in `run`."""
    key = {"source": str(Path(source).resolve()), "n": n, "steps": steps, "zoo": zoo.name}
    cache, meta = run / "mixed_pool.npz", run / "mixed_pool.json"
    if cache.is_file() and meta.is_file() and json.loads(meta.read_text()) == key:
        return Pool.load(cache)
    (run / "train_cache_mixed.pt").unlink(missing_ok=True)   # prepared from an older real pool
    frames = real_frames(source, n)
    inverter = Inverter(zoo, zoo.recipe.tuning.crop_shift_up, progress=False, log=log)
    latents = []
    for k, (name, rgb) in enumerate(frames):
        try:
            _, _, target, reading = inverter.locate(rgb, name)
        except UserError as e:   # no face in this frame: skip it
            log(f"mixed: skipping {name}: {e}")
            continue
        lm = torch.as_tensor(reading.landmarks[None, :, :2])
        roi = roi_from_landmarks(lm, VIEW_SIZE, VIEW_SIZE).float()
        with torch.no_grad():
            pts = torch.as_tensor(points_from_landmarks(reading.landmarks), dtype=torch.float32)[None]
            emb = inverter.scorer.embed_points(net3d_view(target), pts)
        latents.append(inverter.invert(target, roi, lm, emb, steps))
        if progress:
            log(f"mixed: inverted {k + 1}/{len(frames)} ({name})")
    if not latents:
        raise UserError(f"--mixed {source}: no frame with a face to invert")
    z = torch.cat(latents)
    with MediaPipeNet3D("image") as net3d:
        p, lms, bss = render_and_read(zoo.generator, z, net3d)
    detected = ~np.isnan(p).any(1)
    pool = Pool(z.numpy().astype(np.float32), detected, p, lms, bss).subset(detected)
    pool.save(cache)
    meta.write_text(json.dumps(key))
    log(f"mixed: {len(pool.p)} inverted real frames read by Net3D (of {len(frames)})")
    return pool


def concat_pools(a: Pool, b: Pool) -> Pool:
    return Pool(**{k: np.concatenate([getattr(a, k), getattr(b, k)]) for k in a.__dataclass_fields__})
