"""Enrollment quality with low-rank tuned deltas against full tuning, side by side on the same photos.

    python scripts/compare_lowrank.py --ranks 0 16 --photos assets/astronaut.png ../shared/media/portrait_*.jpg \
        --json docs/lowrank_enroll.json

Per photo and rank: SFace of the tuned avatar's own render to the photo, pixel MAE, and the usability
probes (share of moved renders with a face, their mean SFace), as enrollment measures them; the
enrollment time; and the size of the per-avatar weights (full tuned tensors vs U, V factors).
Rank 0 is full tuning (today's recipe).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from engines.accel.lowrank import matrix_shape, worth_factoring
from engines.core.photo import read_photo
from engines.method.zoos import RECIPES, load_zoo
from streamer.avatar.enroll import Enroller, load_or_enroll


def weight_count(tuned: dict, rank: int) -> int:
    """Numbers stored per avatar: full tensors, or U and V for conv weights at rank r."""
    total = 0
    for v in tuned.values():
        if rank and v.dim() >= 4 and worth_factoring(v.shape, rank):
            rows, cols = matrix_shape(v.shape)
            total += rank * (rows + cols)
        else:
            total += v.numel()
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", nargs="+", required=True, help="portrait files")
    ap.add_argument("--ranks", nargs="+", type=int, default=[0, 16], help="delta ranks (0: full tuning)")
    ap.add_argument("--zoo", default="default", help="model set (default: the offline default zoo)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    zoo = load_zoo(args.zoo)
    enroller = Enroller(zoo, progress=False, log=lambda *a: None)
    rows = []
    for photo in args.photos:
        image = read_photo(photo)
        for rank in args.ranks:
            # full tuning is today's recipe: the product's cached pack when there is one
            pack = (load_or_enroll(photo, zoo, progress=False, log=lambda *a: None) if rank == 0
                    else enroller.enroll(image, Path(photo).name, tune_rank=rank))
            q = pack.meta["quality"]
            row = {"photo": Path(photo).name, "rank": rank, "seconds": pack.meta.get("seconds"),
                   "sface": q["tuned"]["sface_cosine"], "pixel_mae": q["tuned"]["pixel_mae"],
                   "probe_faces": q["moving"]["probe_faces"], "probe_sface": q["moving"]["probe_sface"],
                   "weights": weight_count(pack.tuned, rank)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = {r["photo"]: r for r in rows if r["rank"] == 0}
    for r in rows:
        if r["rank"] and r["photo"] in base:
            b = base[r["photo"]]
            print(f"{r['photo']:32s} rank {r['rank']:3d}: SFace {r['sface']:.3f} vs full {b['sface']:.3f} "
                  f"({r['sface'] - b['sface']:+.3f}), probes {r['probe_sface']:.3f} vs {b['probe_sface']:.3f}, "
                  f"weights {r['weights'] / b['weights']:.3f} of full")
    if args.json:
        Path(args.json).write_text(json.dumps({"zoo": args.zoo, "recipe": repr(RECIPES[args.zoo].tuning), "rows": rows},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
