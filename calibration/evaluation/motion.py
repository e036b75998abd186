"""Does the avatar follow the driver and hold together? One table for every portrait x clip pair.

`python -m calibration.evaluation.motion --avatars PHOTO... --clips CLIP... [--json PATH] [--markdown PATH]`

Each avatar is enrolled and driven by each clip exactly as `run_stream.py` does it (product defaults,
the frame's media time as clock). The published frames are read by an independent reader, the
MediaPipe runtime in image mode plus SFace, the way a viewer would read them; driver frames are read the
same way. Per pair:
  * yaw and jawOpen: Pearson correlation of output and driver series, with the driver's sd; checked
    where the driver varies (yaw sd >= 3 degrees, jawOpen sd >= 0.08);
  * SFace of the output to the avatar photo: mean and 10th percentile over the sampled frames (a frame
    with no face counts as 0); SFace of the output to the driver's face;
  * the share of sampled output frames with a face;
  * mean-colour drift p95: per frame the largest per-channel change of the frame's mean RGB from
    frame 0 (0..255 levels), the 95th percentile over frames; for the output and for the driver;
  * chroma fringe: RMS of the high-passed chroma (Cb, Cr) over the frame, output vs the avatar photo's
    aligned crop shown at the same size (coloured fringes are chroma detail the photo does not have);
  * head-angle following: yaw / pitch mean |output change - driver change| since the first frame.
Goals (issue 14): yaw r >= 0.8, jawOpen r >= 0.6 where checked; SFace to the avatar >= 0.5 on average,
>= 0.3 on the worst tenth and above SFace to the driver; a face in >= 95% of frames; drift p95 <=
max(10, driver's + 5).

Widened media (calibration.evaluation.media_variants): `PHOTO~mirror|crop|rot+10|rot-10|grey`, a frame of a clip as
a portrait `CLIP@N`, and `CLIP~mirror|reverse|widemouth|grey|dark|lowres|far|rot+10|noise`; `--widen` adds every variant of every item.
`--jaw-gain K`: a driver who opens K times wider than the clip's (none here exceeds jawOpen sd 0.19): the
driver's jawOpen score, as the reenactor reads it and as it is compared, is stretched K-fold above its
5th percentile (clipped to 0..1); the frames, the head and everything else stay the clip's.
`--yaw-gain K`: likewise a driver who turns the head K times as far about the clip's median yaw (the
reading's rotation turned to the stretched yaw, its pitch and roll kept).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from calibration.evaluation.media_variants import (
    CLIP_VARIANTS,
    PORTRAIT_VARIANTS,
    clip_variant_frames,
    portrait_variant,
    split_name,
    write_portrait,
)
from calibration.identity import IdentityScorer
from calibration.inversion import chosen_face
from engines.core.errors import UserError, main_guard
from engines.core.frames import clip_frame, clip_rgb
from engines.core.photo import read_photo
from engines.core.views import net3d_view
from engines.method.net3d import FaceReading, MediaPipeNet3D
from engines.method.pose import PARAM_NAMES, rotation_from_euler
from engines.models.facelandmarker import BLENDSHAPE_NAMES

YAW_STD_MIN, JAW_STD_MIN = 3.0, 0.08
GOALS = {"yaw_corr": 0.8, "jaw_corr": 0.6, "sface_mean": 0.5, "sface_p10": 0.3, "face_rate": 0.95}
DRIFT_FLOOR, DRIFT_MARGIN = 10.0, 5.0


def output_view(img: np.ndarray, resolution: int) -> torch.Tensor:
    """A published face frame (the generator's crop, upscaled) framed like calibration's Net3D view."""
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


def colour_drift_p95(frame_means: np.ndarray) -> float:
    """frame_means [T,3] in 0..255: p95 over frames of the largest per-channel |mean_t - mean_0|."""
    m = np.asarray(frame_means, np.float64)
    return float(np.percentile(np.abs(m - m[0]).max(1), 95)) if len(m) else float("nan")


def chroma_hf(rgb: np.ndarray, sigma: float = 2.0) -> float:
    """RMS of chroma detail finer than ~sigma px (BT.601 Cb/Cr minus their Gaussian blur), 0..255."""
    from scipy.ndimage import gaussian_filter
    x = rgb.astype(np.float32)
    cb = -0.168736 * x[..., 0] - 0.331264 * x[..., 1] + 0.5 * x[..., 2]
    cr = 0.5 * x[..., 0] - 0.418688 * x[..., 1] - 0.081312 * x[..., 2]
    hf = [c - gaussian_filter(c, sigma) for c in (cb, cr)]
    return float(np.sqrt(np.mean(np.square(hf))))


class Reader:
    """The independent reader: MediaPipe runtime (image mode) + SFace, on images as they are."""

    def __init__(self):
        self.net3d = MediaPipeNet3D("image")
        self.scorer = IdentityScorer()

    def read(self, rgb: np.ndarray):
        """-> (reading, unit SFace embedding) or (None, None)."""
        face = self.net3d.read(rgb)
        if face is None:
            return None, None
        t = torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)[None] / 255
        return face, self.scorer.embed(t, [face])[0].numpy()

    def close(self) -> None:
        self.net3d.close()


# ------------------------------------------------------------------------------------------ media
def load_portrait(spec: str, folder: Path, reader: Reader) -> tuple[str, Path, np.ndarray]:
    """`PHOTO`, `PHOTO~variant` or `CLIP@N[~variant]` -> (name, a PNG the product can enroll, RGB)."""
    base, variant = split_name(spec)
    if "@" in base:
        clip, _, index = base.rpartition("@")
        rgb = clip_frame(Path(clip), int(index), "--avatars ")
        name = f"{Path(clip).stem}@{index}"
    else:
        rgb = read_photo(base)
        name = Path(base).stem
    if variant:
        # the face enrollment takes: its own search (windows, the padded photo) and its choice among rivals
        faces = reader.net3d.find_all(rgb)
        face = chosen_face(faces) if faces else None
        if variant == "crop" and face is None:
            raise UserError(f"{spec}: no face to crop around")
        rgb = portrait_variant(rgb, variant, face.box if face is not None else None)
        name += f"~{variant}"
    if variant is None and "@" not in base:
        return name, Path(base), rgb
    return name, write_portrait(rgb, folder, name), rgb


def clip_frames(spec: str, reader: Reader, max_frames: int | None = None) -> list[tuple[float, np.ndarray]]:
    """All (media time, RGB) frames of a clip variant, in memory: every avatar is driven by the same ones."""
    base, variant = split_name(spec)
    if not Path(base).is_file():
        raise UserError(f"--clips {base}: no such file")
    decoded = ((t, rgb) for _, t, rgb in clip_rgb(Path(base), max_frames, "--clips "))
    return list(clip_variant_frames(decoded, variant, reader.net3d))


def expand(specs: list[str], variants, widen: bool) -> list[str]:
    out = list(specs)
    if widen:
        out += [f"{s}~{v}" for s in specs if "~" not in s for v in variants]
    return out


# ------------------------------------------------------------------------------------------ measuring
@dataclass
class Series:
    """Readings of one frame sequence at the sampled frames (None where no face) + every frame's mean RGB."""
    p: list = field(default_factory=list)
    emb: list = field(default_factory=list)
    means: list = field(default_factory=list)
    chroma: list = field(default_factory=list)


def read_driver(frames, reader: Reader, stride: int) -> Series:
    s = Series()
    for i, (_, rgb) in enumerate(frames):
        s.means.append(rgb.reshape(-1, 3).mean(0))
        if i % stride == 0:
            face, emb = reader.read(rgb)
            s.p.append(None if face is None else face.p)
            s.emb.append(emb)
    return s


def drive(reen, frames, reader: Reader, stride: int) -> Series:
    s = Series()
    for i, (t, rgb) in enumerate(frames):
        img = reen.process(rgb, t).image
        s.means.append(img.reshape(-1, 3).mean(0))
        if i % stride == 0:
            face, emb = reader.read(img)
            s.p.append(None if face is None else face.p)
            s.emb.append(emb)
            s.chroma.append(chroma_hf(img))
    return s


JAW_REST_PERCENTILE = 5


def readings_of(drv: Series, name: str) -> np.ndarray:
    """One parameter's readings over the clip's frames with a face."""
    return np.array([p[PARAM_NAMES.index(name)] for p in drv.p if p is not None])


def jaw_rest(drv: Series) -> float:
    """The driver's jawOpen with the mouth at rest: the 5th percentile of the clip's readings."""
    jaws = readings_of(drv, "jawOpen")
    return float(np.percentile(jaws, JAW_REST_PERCENTILE)) if jaws.size else 0.0


def yaw_centre(drv: Series) -> float:
    """The driver's median yaw (degrees) over the clip's readings, the centre a wider turn swings about."""
    yaws = readings_of(drv, "yaw")
    return float(np.median(yaws)) if yaws.size else 0.0


def wider(score, rest: float, gain: float):
    """A jawOpen score as a driver opening `gain` times as wide from `rest` would show it."""
    return np.clip(rest + gain * (score - rest), 0.0, 1.0)


@dataclass
class Widening:
    """A driver who opens the jaw `jaw_gain` times as wide above `jaw_rest` and turns the head `yaw_gain`
    times as far about `yaw_centre` (degrees) as the clip's readings show (--jaw-gain, --yaw-gain)."""
    jaw_rest: float = 0.0
    jaw_gain: float = 1.0
    yaw_centre: float = 0.0
    yaw_gain: float = 1.0

    @classmethod
    def of(cls, drv: Series, jaw_gain: float, yaw_gain: float) -> "Widening":
        return cls(jaw_rest(drv), jaw_gain, yaw_centre(drv), yaw_gain)

    @property
    def label(self) -> str:
        return "".join(f" {n} x{g:g}" for n, g in (("jaw", self.jaw_gain), ("yaw", self.yaw_gain)) if g != 1.0)

    def pose(self, p) -> np.ndarray:
        out = np.array(p, dtype=np.float64)
        jaw, yaw = PARAM_NAMES.index("jawOpen"), PARAM_NAMES.index("yaw")
        out[jaw] = wider(out[jaw], self.jaw_rest, self.jaw_gain)
        out[yaw] = self.yaw_centre + self.yaw_gain * (out[yaw] - self.yaw_centre)
        return out

    def reading(self, face: FaceReading) -> FaceReading:
        """The reading with its jawOpen score and its head's yaw (through the rotation) widened."""
        shapes = face.blendshapes.copy()
        index = BLENDSHAPE_NAMES.index("jawOpen")
        shapes[index] = wider(shapes[index], self.jaw_rest, self.jaw_gain)
        matrix = face.matrix.copy()
        if self.yaw_gain != 1.0:
            angles = self.pose(face.p)[:3]
            matrix[:3, :3] = rotation_from_euler(angles)
        return FaceReading(face.landmarks, shapes, matrix)


def widened(drv: Series, widening: Widening) -> Series:
    """The driver's series widened (the frames themselves are the clip's)."""
    return Series([None if p is None else widening.pose(p) for p in drv.p], drv.emb, drv.means, drv.chroma)


class WiderDriver:
    """A reenactor's Net3D reader whose readings carry the driver widened (--jaw-gain, --yaw-gain)."""

    def __init__(self, reader, widening: Widening):
        self.reader, self.widening = reader, widening

    def read(self, image, timestamp_ms=None):
        face = self.reader.read(image, timestamp_ms)
        return None if face is None else self.widening.reading(face)

    def close(self) -> None:
        self.reader.close()


def pair_metrics(drv: Series, out: Series, avatar_emb: np.ndarray, avatar_chroma: float) -> dict:
    yaw, pitch, roll, jaw = (PARAM_NAMES.index(n) for n in ("yaw", "pitch", "roll", "jawOpen"))
    both = [i for i, (d, o) in enumerate(zip(drv.p, out.p)) if d is not None and o is not None]
    d_p = np.array([drv.p[i] for i in both]).reshape(-1, len(PARAM_NAMES))
    o_p = np.array([out.p[i] for i in both]).reshape(-1, len(PARAM_NAMES))
    drv_faces = np.array([p for p in drv.p if p is not None]).reshape(-1, len(PARAM_NAMES))
    to_avatar = np.array([0.0 if e is None else float(e @ avatar_emb) for e in out.emb])
    to_driver = [float(o @ d) for o, d in zip(out.emb, drv.emb) if o is not None and d is not None]

    def spread(i: int) -> float:   # the driver's sd of parameter i over the frames with a face
        return float(drv_faces[:, i].std()) if len(drv_faces) else 0.0

    r = {"frames": len(out.means), "sampled": len(out.p), "measured": len(both),
         "face_rate": float(np.mean([p is not None for p in out.p])),
         "driver_yaw_sd": spread(yaw), "driver_jaw_sd": spread(jaw), "driver_roll_sd": spread(roll),
         "yaw_corr": pearson(d_p[:, yaw], o_p[:, yaw]), "jaw_corr": pearson(d_p[:, jaw], o_p[:, jaw]),
         "pitch_corr": pearson(d_p[:, pitch], o_p[:, pitch]), "roll_corr": pearson(d_p[:, roll], o_p[:, roll]),
         "sface_mean": float(to_avatar.mean()), "sface_p10": float(np.percentile(to_avatar, 10)),
         "sface_driver": float(np.mean(to_driver)) if to_driver else float("nan"),
         "drift_p95": colour_drift_p95(np.array(out.means)),
         "driver_drift_p95": colour_drift_p95(np.array(drv.means)),
         "chroma_hf": float(np.mean(out.chroma)), "avatar_chroma_hf": avatar_chroma}
    if len(both) >= 2:
        for n, i in (("yaw", yaw), ("pitch", pitch), ("roll", roll)):
            r.update({f"{n}_{k}": v for k, v in follow(d_p[:, i], o_p[:, i]).items()})
    return judge(r)


def judge(r: dict) -> dict:
    r["yaw_checked"] = r["driver_yaw_sd"] >= YAW_STD_MIN
    r["jaw_checked"] = r["driver_jaw_sd"] >= JAW_STD_MIN
    ok = {"yaw": not r["yaw_checked"] or r["yaw_corr"] >= GOALS["yaw_corr"],
          "jaw": not r["jaw_checked"] or r["jaw_corr"] >= GOALS["jaw_corr"],
          "identity": (r["sface_mean"] >= GOALS["sface_mean"] and r["sface_p10"] >= GOALS["sface_p10"]
                       and r["sface_mean"] > r["sface_driver"]),
          "face": r["face_rate"] >= GOALS["face_rate"],
          "drift": r["drift_p95"] <= max(DRIFT_FLOOR, r["driver_drift_p95"] + DRIFT_MARGIN)}
    r["failed"] = [k for k, v in ok.items() if not v]
    r["pass"] = not r["failed"]
    return r


def enrolled_face(face, pack) -> bool:
    """Whether a reading of the photo is the face enrollment chose: its centre inside the pack's box."""
    cx, cy, side = pack.meta["box"]
    x0, y0, x1, y1 = face.box
    return abs((x0 + x1) / 2 - cx) < side / 2 and abs((y0 + y1) / 2 - cy) < side / 2


def avatar_reference(path: Path, rgb: np.ndarray, reader: Reader, pack) -> tuple[np.ndarray, float]:
    """The photo's SFace embedding, and the chroma detail of its aligned crop at the output's size.
    In a group photo the reader may miss every face (faces a tenth of its width) or find another
    person than enrollment chose; the face is then read in the crop enrollment kept around its face."""
    face, emb = reader.read(rgb)
    if face is None or not enrolled_face(face, pack):
        face, emb = reader.read(pack.display)
    if face is None:
        raise UserError(f"{path}: the reader finds no face in the photo")
    crop = np.asarray(Image.fromarray(pack.display).resize((256, 256), Image.BICUBIC))
    return emb, chroma_hf(crop)


def measure_pair(engine, avatar: Path, clip: str, reader: Reader, stride: int = 2, **reenactor_kw) -> dict:
    """One avatar (photo or pack; its photo is read for the identity reference) driven by one clip."""
    pack = engine.pack(avatar)
    photo = read_photo(avatar) if Path(avatar).suffix not in (".avatar", ".safetensors") else pack.display
    emb, chroma = avatar_reference(Path(avatar), photo, reader, pack)
    frames = clip_frames(clip, reader)
    reen = engine.make_reenactor(avatar, **reenactor_kw)
    try:
        return pair_metrics(read_driver(frames, reader, stride), drive(reen, frames, reader, stride), emb, chroma)
    finally:
        reen.close()


# ------------------------------------------------------------------------------------------ report
def fmt(v, spec=".2f") -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def row(avatar: str, clip: str, r: dict) -> str:
    yaw = f"{fmt(r['yaw_corr'])} ({r['driver_yaw_sd']:.1f})" if r["yaw_checked"] else f"({r['driver_yaw_sd']:.1f})"
    jaw = f"{fmt(r['jaw_corr'])} ({r['driver_jaw_sd']:.2f})" if r["jaw_checked"] else f"({r['driver_jaw_sd']:.2f})"
    return (f"| {avatar} | {clip} | {yaw} | {jaw} | {fmt(r['sface_mean'])} / {fmt(r['sface_p10'])} | "
            f"{fmt(r['sface_driver'])} | {r['face_rate']:.0%} | {r['drift_p95']:.1f} ({r['driver_drift_p95']:.1f}) | "
            f"{r['chroma_hf']:.1f} ({r['avatar_chroma_hf']:.1f}) | {'pass' if r['pass'] else 'FAIL: ' + ', '.join(r['failed'])} |")


HEADER = ("| avatar | clip | yaw r (driver sd °) | jawOpen r (driver sd) | SFace → avatar mean / p10 | SFace → driver "
          "| face | colour drift p95 (driver) | chroma fringe (photo) | goals |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def summary(results: dict) -> str:
    rows = [r for per in results.values() for r in per.values()]
    n = sum(r["pass"] for r in rows)
    return f"{n} of {len(rows)} pairs meet every goal"


@main_guard
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--zoo", default="default", help="model set (default: the offline default zoo)")
    ap.add_argument("--weights", help="vox256 weights folder")
    ap.add_argument("--avatars", "--avatar", nargs="+", required=True,
                    help="portraits: PHOTO, PHOTO~variant, CLIP@FRAME (variants: " + ", ".join(PORTRAIT_VARIANTS) + ")")
    ap.add_argument("--clips", nargs="+", required=True,
                    help="driving clips: CLIP or CLIP~variant (variants: " + ", ".join(CLIP_VARIANTS) + ")")
    ap.add_argument("--widen", action="store_true", help="add every variant of every avatar and clip given")
    ap.add_argument("--stride", type=int, default=2, help="read every Nth frame (default 2; colour drift uses all)")
    ap.add_argument("--max-frames", type=int, help="at most this many frames of each clip")
    ap.add_argument("--jaw-gain", type=float, default=1.0, metavar="K",
                    help="a driver opening K times as wide as the clip's (default 1: the clip as it is)")
    ap.add_argument("--yaw-gain", type=float, default=1.0, metavar="K",
                    help="a driver turning the head K times as far as the clip's (default 1)")
    ap.add_argument("--feedback", type=int, default=0, metavar="N",
                    help="the reenactor's head-pose feedback every N frames (default 0 = off, as run_stream)")
    ap.add_argument("--tune-directions", type=int, nargs="?", const=200, default=0, metavar="STEPS",
                    help="enroll photo avatars with A tuned to them, as run_stream --tune-directions")
    ap.add_argument("--media-dir", type=Path, default=Path("runs/motion_media"),
                    help="where portrait variants are written for enrollment (default runs/motion_media)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--markdown", type=Path, help="write the table here")
    args = ap.parse_args(argv)
    if args.jaw_gain <= 0 or args.yaw_gain <= 0:
        raise UserError(f"--jaw-gain and --yaw-gain must be above 0 (got {args.jaw_gain:g}, {args.yaw_gain:g})")
    torch.set_num_threads(1)
    from streamer.reenact.engine import Engine
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    engine = Engine(args.zoo, args.weights, log=log, progress=False, tune_directions=max(0, args.tune_directions))
    reader = Reader()
    avatars, enroll_s = [], {}
    for spec in expand(args.avatars, PORTRAIT_VARIANTS, args.widen):
        name, path, rgb = load_portrait(spec, args.media_dir, reader)
        t0 = time.time()
        pack = engine.pack(path)
        enroll_s[name] = round(time.time() - t0, 1)
        avatars.append((name, path, *avatar_reference(path, rgb, reader, pack)))
    results: dict = {}
    print(HEADER)
    for clip in expand(args.clips, CLIP_VARIANTS, args.widen):
        frames = clip_frames(clip, reader, args.max_frames)
        drv = read_driver(frames, reader, args.stride)
        clip_name = "~".join(filter(None, [Path(split_name(clip)[0]).stem, split_name(clip)[1]]))
        widening = Widening.of(drv, args.jaw_gain, args.yaw_gain)
        wide = widening.label != ""
        if wide:
            drv, clip_name = widened(drv, widening), clip_name + widening.label
        for name, path, emb, chroma in avatars:
            reen = engine.make_reenactor(path, feedback_every=args.feedback)
            if wide:   # the product reads the clip's frames, then sees the wider driver
                reen.reader = WiderDriver(reen.reader, widening)
            try:
                r = pair_metrics(drv, drive(reen, frames, reader, args.stride), emb, chroma)
            finally:
                reen.close()
            results.setdefault(name, {})[clip_name] = r
            print(row(name, clip_name, r), flush=True)
    reader.close()
    print(summary(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"pairs": results, "enroll_seconds": enroll_s,
                                         "command": " ".join(sys.argv)}, indent=1))
    if args.markdown:
        lines = [HEADER] + [row(a, c, r) for a, per in results.items() for c, r in per.items()] + ["", summary(results)]
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
