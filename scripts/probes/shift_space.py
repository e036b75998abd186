"""Probe (not part of the product): does A work better when it shifts a DCGAN feature map than z?

    python scripts/probes/shift_space.py --run runs/default --space features --out runs/probe_feat
    python scripts/probes/shift_space.py --run runs/default --space both --lr 2e-3 --out runs/probe_both

The generator is wrapped so that its "latent" is [z, delta] with delta added to the feature map after
the first BatchNorm+ReLU (512x4x4) and rectified again (a shift there that ignored the ReLU made
negative activations the generator never sees: 42% of its outputs lost their face). `features` learns
delta only (z fixed), `both` learns z and delta together, like the paper's shift of several W+ layers.
Training is calibration.train's Trainer unchanged (same losses, weights, schedule, seed); evaluation
is calibration.evaluation.evaluate's measurement on the same held-out pairs. Results: docs/calibration.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from calibration.evaluation.evaluate import held_out_pairs, reenact_and_measure  # noqa: E402
from calibration.identity import IdentityScorer  # noqa: E402
from calibration.prepare import TrainData  # noqa: E402
from calibration.train import TrainConfig, Trainer  # noqa: E402
from engines.core.views import net3d_view  # noqa: E402
from engines.method.net3d import MediaPipeNet3D  # noqa: E402
from engines.method.zoos import load_zoo  # noqa: E402
from engines.models.directions import Directions  # noqa: E402
from engines.models.facelandmarker import FaceLandmarkerTorch  # noqa: E402

SPLIT = 3  # main[:3] = ConvTranspose -> BatchNorm -> ReLU: the 512x4x4 map


class FeatureShifted:
    """latent [B, 100 + 8192] = [z, delta]: image = rest(relu(first(z) + delta)). With delta = 0 it is
    exactly G(z). `space` says which part a shift may touch."""

    def __init__(self, g, space: str):
        self.g, self.space = g, space
        self.fshape = (512, 4, 4)
        self.nf = 512 * 16

    def wrap(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([z, torch.zeros(len(z), self.nf)], 1)

    def synthesize(self, x: torch.Tensor) -> torch.Tensor:
        h = self.g.main[:SPLIT](x[:, :100].reshape(-1, 100, 1, 1)) + x[:, 100:].view(-1, *self.fshape)
        return self.g.main[SPLIT:](torch.relu(h))

    def apply_shift(self, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        if self.space == "features":
            shift = torch.cat([torch.zeros(len(shift), 100), shift[:, 100:]], 1)
        return x + shift


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=Path("runs/default"), help="calibration run (stats, pool, cache)")
    ap.add_argument("--space", choices=["features", "both"], required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--init-std", type=float, default=0.01)
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1234, help="held-out pairs' seed")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    zoo = load_zoo("default")
    fg = FeatureShifted(zoo.generator, args.space)
    data = TrainData.load(args.run / "train_cache.pt")
    data.z = fg.wrap(data.z)
    stats = json.loads((args.run / "stats.json").read_text())
    lo = [stats["params"][n]["lo"] for n in zoo.param_names]
    hi = [stats["params"][n]["hi"] for n in zoo.param_names]
    A = Directions(len(zoo.param_names), (100 + fg.nf,), 6.0, zoo.param_names, "default", lo, hi,
                   init_std=args.init_std, meta={"method": "probe", "space": args.space})
    scorer = IdentityScorer(zoo.param_names)
    trainer = Trainer(fg, data, A, FaceLandmarkerTorch.from_task().requires_grad_(False), scorer,
                      TrainConfig(lr=args.lr, batch=16, seed=0, steps=args.steps))
    t0 = time.time()
    while trainer.step < args.steps:
        rec = trainer.train_step()
        if trainer.step % 50 == 0:
            print(f"step {trainer.step} loss {rec['total']:.3f} pose {rec['pose']:.3f} ({time.time() - t0:.0f} s)",
                  flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    A.save(args.out / "directions.safetensors")
    zs, ps, _, pt = held_out_pairs(zoo.generator, args.pairs, args.seed, progress=False)
    net3d = MediaPipeNet3D("image")
    try:
        with torch.no_grad():
            views = net3d_view(zoo.generator.synthesize(zs))
            emb = scorer.embed(views, scorer.read(views, net3d))
        res, _ = reenact_and_measure(fg, A, fg.wrap(zs), ps, pt, net3d, scorer, emb)
    finally:
        net3d.close()
    (args.out / "eval.json").write_text(json.dumps(res, indent=1))
    print(" ".join(f"{k}={res[k]:.3f}" for k in ("yaw", "pitch", "roll", "jawOpen", "identity", "detected")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
