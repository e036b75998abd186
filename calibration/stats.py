"""`python -m calibration.stats --zoo default`: per-parameter statistics that normalise p to [-a, a].

Samples N random latents, renders them, reads p with the Net3D runtime and stores, for every
parameter, the 1st/99th percentiles (lo, hi: the range mapped onto [-a, a], as the paper maps each
DECA coefficient's [min, max]), mean, std, and the detection rate; plus a histogram plot and the pool
itself (latents, p, landmarks) for the baseline and for training.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from calibration.baseline import fit_least_squares
from calibration.sampling import Pool, sample_pool
from engines.core.errors import UserError, main_guard
from engines.method.zoos import load_zoo

LO_Q, HI_Q = 1.0, 99.0


def compute_stats(pool: Pool, names: list[str]) -> dict:
    p = pool.p[pool.detected]
    lo, hi = np.percentile(p, LO_Q, axis=0), np.percentile(p, HI_Q, axis=0)
    params = {}
    for i, name in enumerate(names):
        params[name] = {"lo": float(lo[i]), "hi": float(hi[i]), "mean": float(p[:, i].mean()),
                        "std": float(p[:, i].std()), "median": float(np.median(p[:, i]))}
    return {"n": int(len(pool.detected)), "detected": int(pool.detected.sum()),
            "detection_rate": float(pool.detected.mean()), "percentiles": [LO_Q, HI_Q],
            "params": params}


def crop_recipe(pool: Pool, resolution: int) -> dict:
    """The official crop recipe's constants that reproduce the generator's own framing (medians over
    the samples): box side = factor * landmark extent, centre = landmark-box centre moved up/right."""
    from engines.core.views import view_to_image_px
    xy = view_to_image_px(pool.landmarks[pool.detected][..., :2], resolution)
    lo, hi = xy.min(1), xy.max(1)
    centre = (lo + hi) / 2
    half = resolution / 2
    return {"extent_factor": float(np.median(resolution / (hi - lo).max(1))),
            "shift_up": float(np.median((centre[:, 1] - half) / resolution)),
            "shift_right": float(np.median((half - centre[:, 0]) / resolution))}


def plot_histograms(pool: Pool, names: list[str], stats: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    p = pool.p[pool.detected]
    cols = 5
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows))
    for i, ax in enumerate(np.ravel(axes)):
        if i >= len(names):
            ax.axis("off")
            continue
        s = stats["params"][names[i]]
        ax.hist(p[:, i], bins=60, color="#4477aa")
        for v in (s["lo"], s["hi"]):
            ax.axvline(v, color="#cc3311", lw=1)
        ax.set_title(names[i], fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"Net3D parameters over {len(p)} generated faces (red: lo/hi -> [-a, a])", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@main_guard
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--weights", help="weights folder (vox256)")
    ap.add_argument("--n", type=int, default=4000, help="number of random latents")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="output folder (default runs/<zoo>)")
    ap.add_argument("--quiet", dest="no_progress", action="store_true", help="no progress bars")
    ap.add_argument("--no-progress", action="store_true", help=argparse.SUPPRESS)   # older name
    args = ap.parse_args(argv)
    out = args.out or Path("runs") / args.zoo
    out.mkdir(parents=True, exist_ok=True)
    zoo = load_zoo(args.zoo, args.weights)
    pool = sample_pool(zoo.generator, args.n, args.seed, progress=not args.no_progress)
    if pool.detected.sum() < max(10, len(zoo.param_names) * 3):
        raise UserError(f"Net3D found a face in only {pool.detected.sum()} of {args.n} samples; "
                        "too few for statistics")
    stats = compute_stats(pool, zoo.param_names)
    stats.update(zoo=args.zoo, seed=args.seed,
                 crop_recipe=crop_recipe(pool, zoo.generator.resolution))
    pool.save(out / "pool.npz")
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    plot_histograms(pool, zoo.param_names, stats, out / "stats_hist.png")
    lo = np.array([stats["params"][n]["lo"] for n in zoo.param_names])
    hi = np.array([stats["params"][n]["hi"] for n in zoo.param_names])
    ls, r2 = fit_least_squares(pool, lo, hi, zoo.param_names, args.zoo)
    ls.save(out / "least_squares.safetensors", {"r2": [round(float(v), 4) for v in r2]})
    print("least-squares z->p fit R^2: " + ", ".join(f"{n} {v:.2f}" for n, v in zip(zoo.param_names, r2)))
    print(f"{stats['detected']}/{stats['n']} faces read ({stats['detection_rate']:.1%}); "
          f"wrote {out/'stats.json'}, {out/'pool.npz'}, {out/'stats_hist.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
