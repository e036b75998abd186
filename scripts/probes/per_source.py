"""Probe (not part of the product): how far below a shared linear A can the errors go?

    python scripts/probes/per_source.py --run runs/default pair     # each pair's own shift, optimised
    python scripts/probes/per_source.py --run runs/default source   # A fine-tuned for each source

`pair`: for random source/target pairs of the training pool, the latent shift of each pair is a free
100-d vector, started from the committed A's shift and optimised with calibration.train's losses (Adam,
lr 0.05): a bound on what any shift-based method can reach with these losses and this generator.
`source`: the committed A is fine-tuned for one source at a time (random training targets, cosine lr),
then measured on --targets other targets (default 3) against least squares on the same pairs: what a per-avatar A (like the generator's pivotal tuning) buys.
Both read the results with the MediaPipe runtime, as calibration.evaluation.evaluate does. docs/calibration.md.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from calibration.identity import IdentityScorer  # noqa: E402
from calibration.prepare import TrainData  # noqa: E402
from calibration.sampling import read_images  # noqa: E402
from calibration.train import TrainConfig, Trainer  # noqa: E402
from engines.core.views import net3d_view  # noqa: E402
from engines.method.net3d import MediaPipeNet3D  # noqa: E402
from engines.method.zoo import DATA
from engines.method.zoos import load_zoo  # noqa: E402
from engines.models.directions import Directions  # noqa: E402
from engines.models.facelandmarker import FaceLandmarkerTorch  # noqa: E402


class PairShifts(torch.nn.Module):
    """Stands in for A inside the Trainer: returns each row's own shift whatever dp is."""

    def __init__(self, A: Directions, start: torch.Tensor):
        super().__init__()
        self.delta = torch.nn.Parameter(start.clone())
        self.linear = torch.nn.Linear(1, 1)          # the Trainer builds its optimiser on .linear
        self.k, self.shift_scale = A.k, A.shift_scale
        self.normalise, self.denormalise = A.normalise, A.denormalise

    def forward(self, dp):
        return self.delta


class Meter:
    def __init__(self, G, data, scorer, net3d):
        self.G, self.data, self.scorer, self.net3d = G, data, scorer, net3d
        self.err: dict[str, list] = {}
        self.ident: dict[str, list] = {}

    @torch.no_grad()
    def add(self, key, s, t, shift):
        img = self.G.synthesize(self.data.z[s] + shift)
        faces = read_images(img, self.net3d)
        emb = self.scorer.embed(net3d_view(img), faces)
        for j, f in enumerate(faces):
            self.err.setdefault(key, []).append(np.full(13, np.nan) if f is None else
                                                np.abs(f.p - self.data.p[t[j]].numpy()))
            if f is not None:
                self.ident.setdefault(key, []).append(float((emb[j] * self.data.emb[s[j]]).sum()))

    def report(self):
        for k, v in self.err.items():
            e = np.array(v)
            ok = ~np.isnan(e[:, 0])
            m = e[ok].mean(0)
            print(f"{k:10s} pairs {len(e)}: yaw {m[0]:.2f} pitch {m[1]:.2f} roll {m[2]:.2f} jawOpen {m[3]:.3f} "
                  f"identity {np.mean(self.ident[k]):.3f} detected {ok.mean():.3f}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["pair", "source"])
    ap.add_argument("--run", type=Path, default=Path("runs/default"))
    ap.add_argument("--n", type=int, default=None, help="batches of 16 pairs (pair: 4) / sources (source: 12)")
    ap.add_argument("--steps", type=int, default=None, help="optimisation steps (pair: 100, source: 40)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--lr", type=float, default=3e-3, help="source: peak learning rate")
    ap.add_argument("--targets", type=int, default=3, help="source: held-out targets per source")
    args = ap.parse_args()
    torch.set_num_threads(1)
    zoo = load_zoo("default")
    G = zoo.generator
    data = TrainData.load(args.run / "train_cache.pt")
    A0 = Directions.from_checkpoint(DATA / "default_directions.safetensors")
    LS = Directions.from_checkpoint(DATA / "default_least_squares.safetensors")
    lm = FaceLandmarkerTorch.from_task().requires_grad_(False)
    scorer = IdentityScorer(zoo.param_names)
    net3d = MediaPipeNet3D("image")
    g = torch.Generator().manual_seed(args.seed)
    meter = Meter(G, data, scorer, net3d)
    n_all = len(data.z)
    try:
        if args.mode == "pair":
            for b in range(args.n or 4):
                s = torch.randint(0, n_all, (16,), generator=g)
                t = torch.randint(0, n_all, (16,), generator=g)
                dp = A0.normalise(data.p[t]) - A0.normalise(data.p[s])
                with torch.no_grad():
                    P = PairShifts(A0, A0(dp))
                meter.add("committed", s, t, P.delta)
                tr = Trainer(G, data, P, lm, scorer, TrainConfig(lr=0.0, batch=16, seed=0))
                opt = torch.optim.Adam([P.delta], lr=0.05)
                for _ in range(args.steps or 100):
                    loss, _ = tr.losses(s, dp, data.p[t])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                meter.add("per-pair", s, t, P.delta)
                print(f"batch {b + 1} done", flush=True)
        else:
            n_src, steps, lr, bs, m = args.n or 12, args.steps or 40, args.lr, 8, args.targets
            perm = torch.randperm(n_all, generator=g)
            sources = perm[:n_src]
            targets, train_t = perm[n_src:(m + 1) * n_src].view(n_src, m), perm[(m + 1) * n_src:]
            for n, i in enumerate(sources):
                A = copy.deepcopy(A0).requires_grad_(True)
                tr = Trainer(G, data, A, lm, scorer, TrainConfig(lr=lr, batch=bs, seed=0))
                s_ev, t_ev = i.repeat(m), targets[n]
                with torch.no_grad():
                    meter.add("lstsq", s_ev, t_ev, LS(LS.normalise(data.p[t_ev]) - LS.normalise(data.p[s_ev])))
                    meter.add("committed", s_ev, t_ev, A0(A0.normalise(data.p[t_ev]) - A0.normalise(data.p[s_ev])))
                for k in range(steps):
                    t = train_t[torch.randint(0, len(train_t), (bs,), generator=g)]
                    s = i.repeat(bs)
                    for grp in tr.opt.param_groups:
                        grp["lr"] = 0.5 * lr * (1 + np.cos(np.pi * k / steps))
                    loss, _ = tr.losses(s, A.normalise(data.p[t]) - A.normalise(data.p[s]), data.p[t])
                    tr.opt.zero_grad()
                    loss.backward()
                    tr.opt.step()
                with torch.no_grad():
                    meter.add("per-source", s_ev, t_ev, A(A.normalise(data.p[t_ev]) - A.normalise(data.p[s_ev])))
                print(f"source {n + 1} done", flush=True)
    finally:
        net3d.close()
    meter.report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
