"""Does the avatar follow the driver? `python -m calibration.motion --avatar PHOTO --clips CLIP... --json PATH`

For each driving clip: reenact every frame (relative motion, the product's default), read yaw and
jawOpen (and the rest of p) with the MediaPipe runtime on the driver's frames and on the published
output frames, and report the Pearson correlation of the series where the driver varies (yaw std >= 3
degrees, jawOpen std >= 0.08), plus the mean SFace cosine of the output to the avatar photo and to
the driver (identity must stay the avatar's). Also: yaw / pitch mean absolute difference between the
output's and the driver's change since the first frame, and the gain (output change per driver change).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from engines.errors import main_guard

YAW_STD_MIN, JAW_STD_MIN = 3.0, 0.08


def output_view(img: np.ndarray, resolution: int) -> torch.Tensor:
    """A published face frame (the generator's crop, upscaled) framed like calibration's Net3D view."""
    from PIL import Image
    from engines.views import net3d_view
    small = np.asarray(Image.fromarray(img).resize((resolution, resolution), Image.BICUBIC))
    t = torch.from_numpy(np.array(small, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    return net3d_view(t)


def pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def follow(driver, output) -> dict:
    d, o = driver - driver[0], output - output[0]
    return {"mae_deg": float(np.abs(o - d).mean()),
            "gain": float((d * o).sum() / (d * d).sum()) if (d * d).sum() > 0 else float("nan")}


def measure_clip(engine, avatar, clip: Path, max_frames: int | None = None, stride: int = 1,
                 feedback_every: int = 0) -> dict:
    import av
    from calibration.identity import IdentityScorer
    from engines.net3d import MediaPipeNet3D
    from engines.pose import PARAM_NAMES
    from engines.views import to_uint8
    reen = engine.make_reenactor(avatar, feedback_every=feedback_every)
    scorer = IdentityScorer()
    res = engine.zoo.generator.resolution
    drv_p, out_p, cos_avatar, cos_driver = [], [], [], []
    with MediaPipeNet3D("image") as reader:
        av_view = output_view(reen.avatar_img, res)
        av_face = reader.read(to_uint8(av_view)[0])
        emb_avatar = scorer.embed(av_view, [av_face])
        with av.open(str(clip)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if max_frames and i >= max_frames:
                    break
                rgb = frame.to_ndarray(format="rgb24")
                out = reen.process(rgb, frame.time)
                if i % stride or not out.face_found:
                    continue
                d = reader.read(rgb)
                view = output_view(out.image, res)
                o = reader.read(to_uint8(view)[0])
                if d is None or o is None:
                    continue
                drv_p.append(d.p)
                out_p.append(o.p)
                e_out = scorer.embed(view, [o])
                # the driver's own face, aligned the same way, for the identity-leak comparison
                dv = torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)[None] / 255
                e_drv = scorer.embed(dv, [d])
                cos_avatar.append(float((e_out * emb_avatar).sum()))
                cos_driver.append(float((e_out * e_drv).sum()))
    reen.close()
    drv, out = np.array(drv_p), np.array(out_p)
    yaw, jaw = PARAM_NAMES.index("yaw"), PARAM_NAMES.index("jawOpen")
    r = {"frames": len(drv), "no_face_frames": reen.no_face,
         "driver_yaw_std": float(drv[:, yaw].std()), "driver_jaw_std": float(drv[:, jaw].std()),
         "yaw_corr": pearson(drv[:, yaw], out[:, yaw]), "jaw_corr": pearson(drv[:, jaw], out[:, jaw]),
         "pitch_corr": pearson(drv[:, 1], out[:, 1]),
         # how far the avatar turns, not only when: |change of the output - change of the driver| since
         # the first measured frame (the relative-motion reference), and the least-squares gain
         **{f"{n}_{k}": v for n, i in (("yaw", yaw), ("pitch", 1)) for k, v in follow(drv[:, i], out[:, i]).items()},
         "sface_output_avatar": float(np.mean(cos_avatar)), "sface_output_driver": float(np.mean(cos_driver))}
    r["yaw_checked"] = r["driver_yaw_std"] >= YAW_STD_MIN
    r["jaw_checked"] = r["driver_jaw_std"] >= JAW_STD_MIN
    r["pass"] = bool((not r["yaw_checked"] or r["yaw_corr"] >= 0.8) and (not r["jaw_checked"] or r["jaw_corr"] >= 0.6)
                     and r["sface_output_avatar"] > r["sface_output_driver"])
    return r


@main_guard
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--weights")
    ap.add_argument("--avatar", required=True)
    ap.add_argument("--clips", nargs="+", type=Path, required=True)
    ap.add_argument("--max-frames", type=int)
    ap.add_argument("--feedback", type=int, default=0, metavar="N",
                    help="the reenactor's head-pose feedback every N frames (default 0 = off, as run_stream)")
    ap.add_argument("--tune-directions", type=int, nargs="?", const=200, default=0, metavar="STEPS",
                    help="enroll a photo avatar with A tuned to it, as run_stream --tune-directions")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from streamer.reenact import Engine
    engine = Engine(args.zoo, args.weights, log=lambda m: print(m, file=sys.stderr),
                    tune_directions=max(0, args.tune_directions))
    results = {}
    for clip in args.clips:
        r = measure_clip(engine, args.avatar, clip, args.max_frames, feedback_every=args.feedback)
        results[clip.name] = r
        print(f"{clip.name}: {r['frames']} frames; yaw corr {r['yaw_corr']:.2f} (driver std {r['driver_yaw_std']:.1f} deg"
              f"{'' if r['yaw_checked'] else ', not checked'}); jawOpen corr {r['jaw_corr']:.2f} (std "
              f"{r['driver_jaw_std']:.3f}{'' if r['jaw_checked'] else ', not checked'}); SFace to avatar "
              f"{r['sface_output_avatar']:.3f} vs to driver {r['sface_output_driver']:.3f} -> "
              f"{'PASS' if r['pass'] else 'FAIL'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
