"""Probe (not part of the product): does fine-tuning A for one enrolled avatar make it follow a driver?

    python scripts/probes/avatar_tune.py --avatar assets/astronaut.png --run runs/final --steps 200 \
        --clips assets/pexels_woman.mp4 ../shared/media/driving_lp_*.mp4

The avatar (its pivotal-tuned generator and inverted latent) becomes the only source of the training
loop of calibration.train; targets are random statistics-pool poses; the committed A is the start.
Then calibration.evaluation.motion's measurement runs with the tuned A, with and without the per-avatar
correction. docs/calibration.md.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from calibration.avatar_directions import avatar_sample  # noqa: E402
from calibration.evaluation.motion import Reader, measure_pair  # noqa: E402
from calibration.identity import IdentityScorer  # noqa: E402
from calibration.prepare import TrainData  # noqa: E402
from calibration.train import TrainConfig, Trainer  # noqa: E402
from engines.models.directions import Directions  # noqa: E402
from engines.models.facelandmarker import FaceLandmarkerTorch  # noqa: E402
from streamer.reenact.engine import Engine  # noqa: E402


def with_row(data: TrainData, row: TrainData) -> TrainData:
    cat = {k: torch.cat([getattr(data, k), getattr(row, k)]) for k in data.__dataclass_fields__ if k != "shape_model"}
    return TrainData(**cat, shape_model=data.shape_model)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--avatar", required=True)
    ap.add_argument("--run", type=Path, default=Path("runs/final"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clips", nargs="*", type=Path, default=[])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--load", type=Path, help="measure this tuned A instead of tuning")
    ap.add_argument("--no-correction", action="store_true")
    ap.add_argument("--single-fraction", type=float, default=0.0,
                    help="share of rows that move one direction from the avatar's own pose (calibration.train's "
                         "single-direction rows) instead of going to a random pool pose")
    ap.add_argument("--angles-only", action="store_true",
                    help="tune only the three head-angle columns (rows move one angle; expressions and bias kept)")
    ap.add_argument("--expr-range", type=float, default=2.0, help="single expression steps over +-R a")
    args = ap.parse_args()
    torch.set_num_threads(1)
    engine = Engine("default", log=lambda m: print(m, file=sys.stderr))
    if args.no_correction:
        make = engine.make_reenactor
        engine.make_reenactor = lambda avatar, **kw: make(avatar, correct=False, **kw)
    if args.load:
        measure(engine, args, [("tuned", Directions.from_checkpoint(args.load))])
        return 0
    pack = engine.pack(args.avatar)
    G = pack.generator(engine.zoo.generator)
    data = TrainData.load(args.run / "train_cache.pt")
    lm_net = FaceLandmarkerTorch.from_task().requires_grad_(False)
    scorer = IdentityScorer(engine.zoo.param_names)
    data = with_row(data, avatar_sample(G, pack.latent.float(), data.shape_model, lm_net, scorer))
    me = len(data.z) - 1
    A0 = engine.directions
    A = copy.deepcopy(A0).requires_grad_(True)
    tr = Trainer(G, data, A, lm_net, scorer, TrainConfig(lr=args.lr, batch=args.batch, seed=args.seed,
                                                         single_fraction=args.single_fraction,
                                                         expr_range=args.expr_range))
    pairs = args.batch - round(args.batch * args.single_fraction)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for k in range(args.steps):
        t = torch.randint(0, me, (args.batch,), generator=g)
        s = torch.full_like(t, me)
        for grp in tr.opt.param_groups:
            grp["lr"] = 0.5 * args.lr * (1 + np.cos(np.pi * k / args.steps))
        _, dp, _ = tr.sample()   # rows from `pairs` on: one direction moved by eps
        dp[:pairs] = (A.normalise(data.p[t]) - A.normalise(data.p[s]))[:pairs]
        if args.angles_only:
            dp = torch.zeros_like(dp)
            one = torch.randint(0, 3, (args.batch,), generator=g)
            dp[torch.arange(args.batch), one] = (torch.rand(args.batch, generator=g) * 2 - 1) * A.shift_scale
        loss, _ = tr.losses(s, dp, A.denormalise(A.normalise(data.p[s]) + dp))
        tr.opt.zero_grad()
        loss.backward()
        tr.opt.step()
        if args.angles_only:   # Adam's weight decay moves every entry: put the kept ones back
            with torch.no_grad():
                A.linear.weight[:, 3:] = A0.linear.weight[:, 3:]
                A.linear.bias.copy_(A0.linear.bias)
        if k % 25 == 0:
            print(f"step {k} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    print(f"tuned in {time.time() - t0:.0f} s")
    A.requires_grad_(False)
    if args.out:
        A.save(args.out)
    measure(engine, args, [("tuned", A)])
    return 0


def measure(engine, args, matrices):
    reader = Reader()
    for name, d in matrices:
        engine.directions = d
        for clip in args.clips:
            r = measure_pair(engine, args.avatar, str(clip), reader)
            print(f"{name:9s} {clip.name:28s} yaw r {r['yaw_corr']:.2f} mae {r['yaw_mae_deg']:.2f} gain "
                  f"{r['yaw_gain']:.2f} | pitch r {r['pitch_corr']:.2f} mae {r['pitch_mae_deg']:.2f} | jaw r "
                  f"{r['jaw_corr']:.2f} | sface {r['sface_mean']:.3f}", flush=True)
    reader.close()


if __name__ == "__main__":
    raise SystemExit(main())
