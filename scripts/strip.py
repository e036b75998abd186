"""Before/after strip for the docs from side-by-side demo videos (driver | avatar | result, 256 px high).

    python scripts/strip.py --videos before.mp4 after.mp4 --labels "before" "after" --frames 0 60 120 \
        --out docs/strip.png
    python scripts/strip.py --videos out/demo.mp4 --labels reenacted --frames 40 120 260 300 350 420 \
        --size 128 --with-avatar --out docs/demo_strip.png        # the README's picture

Row 1: the driver at each frame; then one row per video with its result column. Only ever run it on
the bundled astronaut and Pexels clip (the other media's licences allow testing, not publishing).
"""
from __future__ import annotations

import argparse

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont


def frames_at(path: str, indices: list[int]) -> dict[int, np.ndarray]:
    out = {}
    with av.open(path) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in indices:
                out[i] = f.to_ndarray(format="rgb24")
            if i >= max(indices):
                break
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", nargs="+", required=True, help="side-by-side outputs (run_stream --side-by-side)")
    ap.add_argument("--labels", nargs="+", required=True)
    ap.add_argument("--frames", nargs="+", type=int, required=True)
    ap.add_argument("--size", type=int, default=160, help="tile side in pixels")
    ap.add_argument("--with-avatar", action="store_true",
                    help="first column: the avatar photo (the middle panel) beside each video's row")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    s, label_w = args.size, 90
    rows = []
    per_video = [frames_at(v, args.frames) for v in args.videos]
    first = per_video[0]
    h = next(iter(first.values())).shape[0]
    drv_w = next(iter(first.values())).shape[1] - 2 * h
    rows.append(("driver", [Image.fromarray(first[i][:, (drv_w - h) // 2:(drv_w + h) // 2]) for i in args.frames]))
    for label, frames in zip(args.labels, per_video):
        rows.append((label, [Image.fromarray(frames[i][:, -h:]) for i in args.frames]))
    if args.with_avatar:
        blank = Image.new("RGB", (h, h), "white")
        ImageDraw.Draw(blank).text((h // 10, h - h // 4), "avatar photo", fill="black",
                                   font=ImageFont.load_default(size=h // 8))
        rows[0][1].insert(0, blank)
        for (_, tiles), frames in zip(rows[1:], per_video):
            tiles.insert(0, Image.fromarray(frames[args.frames[0]][:, -2 * h:-h]))
    sheet = Image.new("RGB", (label_w + s * len(rows[0][1]), s * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, tiles) in enumerate(rows):
        draw.text((6, r * s + s // 2 - 6), label, fill="black")
        for c, tile in enumerate(tiles):
            sheet.paste(tile.resize((s, s), Image.BICUBIC), (label_w + c * s, r * s))
    sheet.save(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
