"""Probe (not part of the product): where the yaw / pitch / jawOpen errors of a linear A come from.

    python scripts/probes/gain_structure.py --run runs/default

On calibration.evaluation.evaluate's held-out pairs, for the committed learned A and the least-squares baseline:
  * a regression of the achieved parameter on the source's and the target's (ideal: 0 x source +
    1 x target), and how the achieved/requested gain varies with where the move goes;
  * how repeatable MediaPipe's reading of a generated face is (the same image shifted by one pixel);
  * the least-squares baseline refitted after Gaussianising each parameter (empirical CDF -> probit,
    the 1st/99th percentiles still mapping to -a/+a): if the response were a monotone squashing of one
    Gaussian latent coordinate, this would straighten it. Results: docs/calibration.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from calibration.evaluation.evaluate import held_out_pairs  # noqa: E402
from calibration.sampling import Pool, read_images  # noqa: E402
from engines.method.net3d import MediaPipeNet3D  # noqa: E402
from engines.method.zoo import DATA
from engines.method.zoos import load_zoo  # noqa: E402
from engines.models.directions import Directions  # noqa: E402

NAMES = {0: "yaw", 1: "pitch", 3: "jawOpen"}


def read_p(images, net3d) -> np.ndarray:
    return np.array([f.p if f is not None else np.full(13, np.nan) for f in read_images(images, net3d)])


def gaussianiser(pool_p: np.ndarray, d: Directions, which, a: float = 6.0, knots: int = 41):
    from scipy.stats import norm
    qs = np.linspace(0.01, 0.99, knots)
    kp = np.quantile(pool_p, qs, axis=0).T
    kn = norm.ppf(qs) / norm.ppf(0.99) * a

    def f(p):
        out = d.normalise(torch.as_tensor(p, dtype=torch.float64)).numpy()
        for i in which:
            x, k = p[:, i], kp[i]
            y = np.interp(x, k, kn)
            y = np.where(x < k[0], kn[0] + (x - k[0]) * (kn[1] - kn[0]) / (k[1] - k[0]), y)
            out[:, i] = np.where(x > k[-1], kn[-1] + (x - k[-1]) * (kn[-1] - kn[-2]) / (k[-1] - k[-2]), y)
        return out
    return f


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=Path("runs/default"), help="calibration run with pool.npz")
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    torch.set_num_threads(2)
    zoo = load_zoo("default")
    G = zoo.generator
    zs, ps, _, pt = held_out_pairs(G, args.pairs, args.seed, progress=False)
    net3d = MediaPipeNet3D("image")
    try:
        for name in ("least_squares", "directions"):
            d = Directions.from_checkpoint(DATA / f"default_{name}.safetensors")
            dp = d.normalise(torch.as_tensor(pt, dtype=torch.float32)) - d.normalise(torch.as_tensor(ps, dtype=torch.float32))
            with torch.no_grad():
                pa = read_p(G.synthesize(zs + d(dp)), net3d)
            ok = ~np.isnan(pa[:, 0])
            for i, n in NAMES.items():
                X = np.c_[ps[ok, i], pt[ok, i], np.ones(ok.sum())]
                c, *_ = np.linalg.lstsq(X, pa[ok, i], rcond=None)
                req, ach = (pt - ps)[ok, i], (pa - ps)[ok, i]
                big = np.abs(req) > np.quantile(np.abs(req), 0.4)
                gain = ach[big] / req[big]
                away = ps[ok, i][big] * np.sign(req[big])   # > 0: moving further from where the source is
                print(f"{name:13s} {n:8s} achieved = {c[0]:+.2f}*source {c[1]:+.2f}*target {c[2]:+.2f}; "
                      f"gain {gain.mean():.2f} +- {gain.std():.2f}, corr(gain, source x sign(request)) "
                      f"{np.corrcoef(gain, away)[0, 1]:+.2f}")
        with torch.no_grad():
            img = G.synthesize(zs)
        p0, p1 = read_p(img, net3d), read_p(torch.roll(img, 1, dims=3), net3d)
        ok = ~np.isnan(p0[:, 0]) & ~np.isnan(p1[:, 0])
        diff = np.abs(p1[ok] - p0[ok]).mean(0)
        print("reading repeatability (1-px shift): " + ", ".join(f"{n} {diff[i]:.3f}" for i, n in NAMES.items()))
        pool = Pool.load(args.run / "pool.npz")
        pool = pool.subset(pool.detected)
        d = Directions.from_checkpoint(DATA / "default_least_squares.safetensors")
        X = np.c_[pool.latents.astype(np.float64), np.ones(len(pool.p))]
        for label, which in (("linear", []), ("angles Gaussianised", [0, 1, 2]), ("all Gaussianised", range(13))):
            f = gaussianiser(pool.p, d, list(which))
            coef, *_ = np.linalg.lstsq(X, f(pool.p), rcond=None)
            shift = (f(pt) - f(ps)) @ np.linalg.pinv(coef[:-1].T).T
            with torch.no_grad():
                pa = read_p(G.synthesize(zs + torch.as_tensor(shift, dtype=torch.float32)), net3d)
            ok = ~np.isnan(pa[:, 0])
            err = np.abs(pa[ok] - pt[ok]).mean(0)
            print(f"least squares, {label:20s}: " + ", ".join(f"{n} {err[i]:.3f}" for i, n in NAMES.items())
                  + f", detected {ok.mean():.3f}")
    finally:
        net3d.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
