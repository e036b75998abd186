"""`python -m calibration.evaluation.evaluate --zoo default --pairs N --seed S --json PATH`

Held-out random source/target latent pairs (a seed the statistics never used). For each method the
reenacted latent is z_s + shift(dp), dp = normalised p_target - p_source, and the reenacted image is
read by the Net3D runtime. Reported per method:
  * mean absolute error of every parameter vs the target (degrees for angles, blendshape units),
  * identity: mean SFace cosine between source and reenacted faces,
  * detected: fraction of reenacted images in which the runtime still finds a face (errors and
    identity are averaged over those).
Methods: no_shift (reenacted = source), least_squares (calibration.baseline), learned (trained A).
The errors are also printed (and written next to --json as *_common.json) over the pairs where every
method's output has a face, since each method's own mean skips the faces it broke.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from calibration.identity import IdentityScorer
from calibration.sampling import sample_pool
from engines.core.errors import UserError, main_guard
from engines.core.views import net3d_view
from engines.method.net3d import MediaPipeNet3D
from engines.method.zoo import DATA
from engines.method.zoos import load_zoo
from engines.models.directions import Directions


def held_out_pairs(generator, n_pairs: int, seed: int, progress: bool = True):
    """Sample sources and targets with faces; returns (z_src, p_src, z_tgt, p_tgt)."""
    pool = sample_pool(generator, int(n_pairs * 2 / 0.9) + 8, seed, progress=progress)
    ok = pool.subset(pool.detected)
    if len(ok.p) < 2 * n_pairs:
        raise UserError(f"only {len(ok.p)} faces found for {n_pairs} pairs; lower --pairs")
    s, t = slice(0, n_pairs), slice(n_pairs, 2 * n_pairs)
    return (torch.as_tensor(ok.latents[s]), ok.p[s], torch.as_tensor(ok.latents[t]), ok.p[t])


@torch.no_grad()
def reenact_and_measure(generator, directions: Directions | None, z_src, p_src, p_tgt,
                        net3d: MediaPipeNet3D, scorer: IdentityScorer, src_emb: torch.Tensor,
                        batch: int = 100) -> tuple[dict, np.ndarray]:
    """(summary, per-pair absolute errors [N, K] with NaN rows where the runtime found no face)."""
    errs, cos = [], []
    for s in range(0, len(z_src), batch):
        z = z_src[s:s + batch]
        if directions is not None:
            dp = directions.normalise(torch.as_tensor(p_tgt[s:s + batch], dtype=torch.float32)) - \
                 directions.normalise(torch.as_tensor(p_src[s:s + batch], dtype=torch.float32))
            z = generator.apply_shift(z, directions(dp))
        views = net3d_view(generator.synthesize(z))
        faces = scorer.read(views, net3d)
        for j, face in enumerate(faces):
            errs.append(np.full(len(scorer.param_names), np.nan) if face is None else np.abs(face.p - p_tgt[s + j]))
        emb = scorer.embed(views, faces)
        ok = torch.tensor([f is not None for f in faces])
        if ok.any():
            cos.append(torch.nn.functional.cosine_similarity(emb[ok], src_emb[s:s + batch][ok]).numpy())
    errs = np.array(errs)
    found = ~np.isnan(errs[:, 0])
    out = {n: float(errs[found, i].mean()) for i, n in enumerate(scorer.param_names)}
    out["identity"] = float(np.concatenate(cos).mean()) if cos else float("nan")
    out["detected"] = float(found.mean())
    return out, errs


def evaluate(zoo, pairs: int, seed: int, learned: Path | None, least_squares: Path | None,
             progress: bool = True) -> tuple[dict, dict]:
    """(results per method, the same errors on the pairs where every method's output has a face).
    Each method's own mean skips the pairs it broke, so a method that breaks the hard pairs would
    look better than it is: the common subset compares like with like."""
    z_src, p_src, z_tgt, p_tgt = held_out_pairs(zoo.generator, pairs, seed, progress)
    learned_d = zoo.directions() if learned is None else Directions.from_checkpoint(
        learned, expect_zoo=zoo.name, expect_params=zoo.param_names)
    ls_path = least_squares or DATA / f"{zoo.name}_least_squares.safetensors"
    ls_d = Directions.from_checkpoint(ls_path, expect_zoo=zoo.name, expect_params=zoo.param_names)
    net3d = MediaPipeNet3D("image")
    scorer = IdentityScorer(zoo.param_names)
    try:
        with torch.no_grad():
            src_views = net3d_view(zoo.generator.synthesize(z_src))
            src_emb = scorer.embed(src_views, scorer.read(src_views, net3d))
        results, per_pair = {}, {}
        for method, d in (("no_shift", None), ("least_squares", ls_d), ("learned", learned_d)):
            # each matrix normalises dp with the statistics it was fitted/trained with
            results[method], per_pair[method] = reenact_and_measure(zoo.generator, d, z_src, p_src, p_tgt,
                                                                    net3d, scorer, src_emb)
    finally:
        net3d.close()
    keep = np.all([~np.isnan(v[:, 0]) for v in per_pair.values()], axis=0)
    common = {m: {n: float(v[keep, i].mean()) for i, n in enumerate(zoo.param_names)} | {"pairs": int(keep.sum())}
              for m, v in per_pair.items()}
    return results, common


def format_table(results: dict, names: list[str]) -> str:
    cols = list(results)
    rows = [["parameter", *cols]]
    for n in [*names, "identity", "detected"]:
        rows.append([n, *(f"{results[c][n]:.3f}" for c in cols)])
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)) for r in rows)


@main_guard
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Evaluate direction matrices on held-out random pairs")
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--weights", help="weights folder (vox256)")
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--directions", type=Path, help="learned A (default: the zoo's committed file)")
    ap.add_argument("--least-squares", type=Path, help="baseline file (default: the zoo's committed file)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    zoo = load_zoo(args.zoo, args.weights)
    results, common = evaluate(zoo, args.pairs, args.seed, args.directions, args.least_squares)
    print(format_table(results, zoo.param_names))
    n = next(iter(common.values()))["pairs"]
    print(f"\non the {n} pairs where every method's output has a face:")
    print(format_table({m: {**r, "identity": float("nan"), "detected": 1.0} for m, r in common.items()},
                       zoo.param_names))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        args.json.with_name(args.json.stem + "_common.json").write_text(json.dumps(common, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
