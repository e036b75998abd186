"""Shared + low-rank against grouped per-avatar weights, side by side in one run (issue 19's first sign).

    python -m streamer.bench.lowrank --batch 8 --rank 64 --repeats 5 [--device cuda] [--json docs/lowrank_cpu.json]

Both paths render the same batch, each sample with its own avatar (slot), from the same banks:
vox256's StyleGAN2-256 (official-size random weights, tuned layers convs.4-11) and the default zoo's
DCGAN (tuned main.3-12). Runs alternate so a loaded machine slows both alike; medians are reported.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from engines.accel.avatar_batch import AvatarBank, DCGANBatch, StyleGAN2Batch
from engines.accel.lowrank import DCGANLowRank, LowRankBank, StyleGAN2LowRank, matrix_shape
from engines.method.zoos import RECIPES
from engines.models.dcgan import DCGAN
from engines.models.stylegan2 import StyleGAN2
from engines.weights.random_weights import random_stylegan2
from streamer.bench.report import save_json
from streamer.bench.timing import once_ms


def low_rank_avatar(g, prefixes, rank: int, seed: int) -> dict:
    """Tuned tensors shaped like a low-rank enrollment's (random values of a plausible size)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for n, p in g.named_parameters():
        if n.startswith(prefixes) and n.endswith(".weight") and p.dim() >= 4:
            rows, cols = matrix_shape(p.shape)
            d = torch.randn(rows, rank, generator=gen) @ torch.randn(rank, cols, generator=gen)
            out[n] = p.detach() + 0.01 * d.view(p.shape) * p.detach().std()
    return out


def side_by_side(g, prefixes, make_grouped, make_low, inputs, batch: int, rank: int, repeats: int,
                 device="cpu") -> dict:
    full, low = AvatarBank(g, prefixes, batch + 1), LowRankBank(g, prefixes, rank, batch + 1)
    for s in range(1, batch + 1):
        t = low_rank_avatar(g, prefixes, rank, s)
        full.set(s, t)
        low.set(s, t)
    full.to(device), low.to(device)
    slot = torch.arange(1, batch + 1, device=device)
    runs = {"grouped": make_grouped(g, full), "shared_low_rank": make_low(g, low)}
    # StyleGAN2's untuned layers: grouped as the official code, shared beside the low-rank layers
    modes = {"grouped": "grouped", "shared_low_rank": "shared"}
    times = {k: [] for k in runs}

    def run(k):
        if hasattr(g, "set_conv_mode"):
            g.set_conv_mode(modes[k])
        return runs[k](inputs, slot)
    with torch.no_grad():
        outs = {k: run(k) for k in runs}   # warm-up, and the outputs to compare
        for _ in range(repeats):
            for k in runs:
                times[k].append(once_ms(run, k, device))
    ref = outs["grouped"]
    med = {k: round(statistics.median(v), 1) for k, v in times.items()}
    return {"batch": batch, "rank": rank, "ms_median": med,
            "grouped_over_low_rank": round(med["grouped"] / med["shared_low_rank"], 2),
            "rel_l2": float((outs["shared_low_rank"] - ref).norm() / ref.norm()),
            "bank_numbers": {"grouped": sum(b.numel() for b in full.buffers()),
                             "shared_low_rank": sum(b.numel() for b in low.buffers())}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8, help="sessions per batch, each its own avatar (default 8)")
    ap.add_argument("--rank", type=int, default=16, help="rank of each avatar's conv deltas (default 16)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per path (default 5)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (fp32 on both)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sd, _ = random_stylegan2(256, 1, seed=0)
    dev = args.device
    sg = StyleGAN2.from_state_dict(sd)
    lat = sg.sample_latents(args.batch, torch.Generator().manual_seed(1)).to(dev)
    dc = DCGAN.from_checkpoint()
    z = torch.randn(args.batch, 100, generator=torch.Generator().manual_seed(1)).to(dev)
    sg.to(dev), dc.to(dev)
    result = {"device": torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu",
              "threads": torch.get_num_threads(),
              "vox256_stylegan2": side_by_side(sg, RECIPES["vox256"].tuning.layers, StyleGAN2Batch, StyleGAN2LowRank,
                                               lat, args.batch, args.rank, args.repeats, dev),
              "default_dcgan": side_by_side(dc, RECIPES["default"].tuning.layers, DCGANBatch, DCGANLowRank,
                                            z, args.batch, args.rank, args.repeats, dev)}
    for name in ("vox256_stylegan2", "default_dcgan"):
        r = result[name]
        print(f"{name:17s} batch {r['batch']} rank {r['rank']}: grouped {r['ms_median']['grouped']} ms, "
              f"shared+low-rank {r['ms_median']['shared_low_rank']} ms -> {r['grouped_over_low_rank']}x "
              f"(rel. L2 {r['rel_l2']:.1e}; bank {r['bank_numbers']['shared_low_rank'] / r['bank_numbers']['grouped']:.3f} of grouped's)")
    if args.json:
        save_json(Path(args.json), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
