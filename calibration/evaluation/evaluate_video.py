"""`python -m calibration.evaluation.evaluate_video --clips DIR|FILES --json PATH --report PATH.md`

The paper's video protocol (Bounareli et al. 2022, Table 1) on driving clips, through the product's
own per-frame engine (streamer.reenact.engine):
  * self-reenactment: the source is a clip's first frame (`--avatar-frame`), enrolled as the avatar;
    the targets are the clip's later frames; outputs are compared with the target frames;
  * cross-reenactment: the source is another clip's first frame; the driver is the whole clip.
Every output and every driver frame is read by the MediaPipe runtime in image mode (the reference
Net3D, independent of the engine's video-mode tracker). Metrics:
  * CSIM: SFace cosine (faces aligned by MediaPipe's five points) of the output with the source
    frame; for self-reenactment also with the target frame;
  * NME (self only): 68 landmarks (iBUG-68 positions taken from MediaPipe's 478) of the output vs the
    target, the target's landmarks put into the output's frame by the avatar's crop box (the fixed
    per-video crop, as VoxCeleb's are), mean point distance / the target's outer-eye-corner distance
    (300-W inter-ocular normalisation), in percent. `nme_aligned` removes each set's centroid first
    (no translation: the generator keeps its face centred);
  * pose error: mean of |yaw|, |pitch|, |roll| differences in degrees; expression error: mean
    |difference| of the 10 expression blendshape scores (engines.method.pose.EXPRESSIONS, units of [0, 1]);
    self: output vs target frame; cross, relative mode (the product default): output vs
    p(avatar) + (p_driver(t) - p_driver(first frame with a face)), p(avatar) read on the avatar's
    reconstruction as published at zero motion; cross, absolute mode (the paper's dp): vs p_driver(t);
  * LPIPS (self): output vs the target frame cut with the avatar's crop box, both 256 px; only with
    LPIPS weights (`--weights DIR` holding alex.pth and alexnet-owt-7be5be79.pth);
  * FID (self): outputs vs target crops, features from `--fid-features` (calibration.evaluation.fid); only when
    given.
  * r(yaw), r(pitch), r(jawOpen): Pearson correlation of output and target series per pair (does
    the output follow at all, whatever its offset).
Frames where the runtime finds no face in the target are skipped; outputs without a face are counted
(`output_face_rate`) and left out of the averages. `static` rows hold the avatar still (the output is
its reconstruction on every frame): the errors a method that ignores the driver would get.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from calibration.evaluation.video_report import CROP, fmt, plot_series, save_strip, write_report
from engines.core.errors import UserError, main_guard
from engines.core.files import VIDEO_SUFFIXES, sha256_file
from engines.core.frames import clip_frame, clip_rgb, frame_count

# iBUG-68 points as MediaPipe FaceMesh indices: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67
MP68 = [162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,
        71, 63, 105, 66, 107, 336, 296, 334, 293, 301,
        168, 197, 5, 4, 75, 97, 2, 326, 305,
        33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
        61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
        78, 82, 13, 312, 308, 317, 14, 87]
OUTER_EYES = (36, 45)

def list_clips(items) -> list[Path]:
    out = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in VIDEO_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"--clips {it}: no such file or folder")
    if not out:
        raise UserError("--clips: no video files found")
    return out


# ---------------------------------------------------------------------------- measuring
class Instruments:
    """The reference readers: MediaPipe runtime (image mode), SFace, optional LPIPS and FID features."""

    def __init__(self, resolution: int, lpips=None, fid_extractor=None):
        from calibration.identity import IdentityScorer
        from engines.method.net3d import MediaPipeNet3D
        self.reader = MediaPipeNet3D("image")
        self.scorer = IdentityScorer()
        self.res = resolution
        self.lpips, self.fid = lpips, fid_extractor

    def read_frame(self, rgb: np.ndarray):
        face = self.reader.read(rgb)
        emb = None
        if face is not None:
            t = torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)[None] / 255
            emb = self.scorer.embed(t, [face])[0]
        return face, emb

    def read_output(self, img: np.ndarray):
        """A published output -> (reading with landmarks in CROP px, embedding) or (None, None)."""
        from calibration.evaluation.motion import output_view
        from engines.core.views import to_uint8, view_to_image_px
        view = output_view(img, self.res)
        face = self.reader.read(to_uint8(view)[0])
        if face is None:
            return None, None
        emb = self.scorer.embed(view, [face])[0]
        lm = face.landmarks.copy()
        lm[:, :2] = view_to_image_px(lm[:, :2], self.res) * (CROP / self.res)
        face.landmarks = lm
        return face, emb

    def close(self) -> None:
        self.reader.close()


def nme(out_lm: np.ndarray, tgt_lm: np.ndarray, aligned: bool = False) -> float:
    """68-point NME in percent of the target's outer-eye-corner distance."""
    o, t = out_lm[MP68, :2].astype(np.float64), tgt_lm[MP68, :2].astype(np.float64)
    iod = np.linalg.norm(t[OUTER_EYES[0]] - t[OUTER_EYES[1]])
    if aligned:
        o, t = o - o.mean(0), t - t.mean(0)
    return float(np.linalg.norm(o - t, axis=1).mean() / max(iod, 1e-6) * 100)


@dataclass
class Tally:
    """Per (source, driver, mode) accumulators."""
    frames: int = 0              # target frames with a face (measured)
    output_faces: int = 0
    csim_src: list = field(default_factory=list)
    csim_tgt: list = field(default_factory=list)
    nme: list = field(default_factory=list)
    nme_aligned: list = field(default_factory=list)
    pose: list = field(default_factory=list)      # [3] per frame
    exp: list = field(default_factory=list)       # [10] per frame
    lpips: list = field(default_factory=list)
    series: list = field(default_factory=list)    # (t, target p, output p) for plots
    fid_out: list = field(default_factory=list)   # features
    fid_tgt: list = field(default_factory=list)

    def summary(self, names: list[str]) -> dict:
        def m(v):
            return float(np.mean(v)) if len(v) else None
        pose = np.array(self.pose).reshape(-1, 3)
        exp = np.array(self.exp).reshape(-1, len(names) - 3)
        d = {"frames": self.frames, "output_face_rate": self.output_faces / self.frames if self.frames else None,
             "csim": m(self.csim_src), "csim_target": m(self.csim_tgt), "nme": m(self.nme),
             "nme_aligned": m(self.nme_aligned), "pose": m(pose.mean(1)) if len(pose) else None,
             "exp": m(exp.mean(1)) if len(exp) else None, "lpips": m(self.lpips), "fid": None}
        if len(pose):
            d.update({f"err_{n}": float(pose[:, i].mean()) for i, n in enumerate(names[:3])})
            d.update({f"err_{n}": float(exp[:, i].mean()) for i, n in enumerate(names[3:])})
        if len(self.series) >= 3:   # does the output follow the target? (None: constant output)
            from calibration.evaluation.motion import pearson
            tgt = np.array([x[1] for x in self.series])
            out = np.array([x[2] for x in self.series])
            for n in ("yaw", "pitch", "jawOpen"):
                i = names.index(n)
                r = pearson(tgt[:, i], out[:, i]) if np.ptp(out[:, i]) > 1e-9 else float("nan")
                d[f"r_{n}"] = None if np.isnan(r) else r
        if len(self.fid_out) > 1 and len(self.fid_tgt) > 1:
            from calibration.evaluation.fid import fid_from_features
            d["fid"] = fid_from_features(np.concatenate(self.fid_out), np.concatenate(self.fid_tgt))
        return d


class Session:
    """One source avatar driven by one clip in one mode ('relative', 'absolute' or 'static')."""

    def __init__(self, engine, source: "Source", driver: str, mode: str, smooth: bool):
        from streamer.reenact.engine import AvatarReenactor
        self.source, self.driver, self.mode = source, driver, mode
        self.self_reenact = source.clip == driver
        self.reen = None if mode == "static" else AvatarReenactor(engine, source.pack, relative=mode == "relative",
                                                                  smooth=smooth)
        self.tally = Tally()
        self.strip: list = []
        self.figures = False

    def output(self, t: float, rgb: np.ndarray) -> np.ndarray:
        """The output in the avatar's crop frame (the generator's square of the published frame)."""
        from streamer.avatar.framing import generator_view
        if self.reen is None:
            return self.source.avatar_img
        # the clip's own clock: the result does not depend on how fast this machine evaluates
        return generator_view(self.reen.process(rgb, t).image, self.source.pack.display_scale)

    def close(self) -> None:
        if self.reen is not None:
            self.reen.close()


@dataclass
class Source:
    clip: str
    frame_index: int
    rgb: np.ndarray
    pack: object
    box: np.ndarray
    emb: torch.Tensor             # SFace of the source frame
    avatar_img: np.ndarray        # the avatar's reconstruction at zero motion (its crop frame, 256 px)
    avatar_p: np.ndarray          # its p, read like every output
    avatar_reading: object        # that reading (landmarks in CROP px)
    avatar_emb: torch.Tensor


def enroll_source(engine, inst: Instruments, clip: Path, index: int, steps: tuple[int | None, int | None],
                  log, tune: bool = True) -> Source:
    from streamer.avatar.enroll import Enroller, cache_dir, recipe_key
    from streamer.avatar.pack import AvatarPack
    from streamer.reenact.engine import AvatarReenactor
    rgb = clip_frame(clip, index, "--clips ")
    face, emb = inst.read_frame(rgb)
    if face is None:
        raise UserError(f"no face in frame {index} of {clip.name}; pick another with --avatar-frame")
    zoo = engine.zoo
    a_sha = sha256_file(Path(zoo.directions_path))[:12] if zoo.directions_path else "none"
    key = hashlib.sha256(rgb.tobytes() + repr((rgb.shape, steps, tune)).encode()).hexdigest()[:24]
    path = cache_dir() / f"eval-{key}-{zoo.name}-{a_sha}-r{recipe_key(zoo.name)}.avatar"
    if path.is_file():
        pack = AvatarPack.load(path)
    else:
        log(f"enrolling frame {index} of {clip.name} (cached at {path})")
        pack = Enroller(zoo, engine.progress, log).enroll(rgb, f"{clip.name} frame {index}", tune=tune,
                                                         invert_steps=steps[0], tune_steps=steps[1])
        pack.save(path)
    from streamer.avatar.framing import generator_view
    reen = AvatarReenactor(engine, pack)
    avatar_img = generator_view(reen.avatar_img, pack.display_scale)
    reen.close()
    reading, avatar_emb = inst.read_output(avatar_img)
    if reading is None:
        raise UserError(f"the avatar enrolled from {clip.name} frame {index} shows no face the reader finds")
    return Source(clip.stem, index, rgb, pack, np.asarray(pack.meta["box"]), emb, avatar_img, reading.p, reading,
                  avatar_emb)


def crop_target(rgb: np.ndarray, box) -> np.ndarray:
    from engines.method.align import crop_image
    return crop_image(rgb, box, CROP)


def to_m11(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1


def measure(sess: Session, inst: Instruments, t: float, out_img: np.ndarray, drv_face, drv_emb,
            drv_rgb: np.ndarray, p_ref: np.ndarray, keep_strip: bool) -> None:
    src, tally = sess.source, sess.tally
    tally.frames += 1
    if sess.mode == "static":   # the same image every frame: read once at enrollment
        o, o_emb = src.avatar_reading, src.avatar_emb
    else:
        o, o_emb = inst.read_output(out_img)
    if o is None:
        return
    tally.output_faces += 1
    tally.csim_src.append(float((o_emb * src.emb).sum()))
    if sess.self_reenact or sess.mode == "absolute":
        target = drv_face.p
    else:   # relative: the avatar's own pose plus the driver's motion since its first face
        target = src.avatar_p + (drv_face.p - p_ref)
    err = np.abs(o.p - target)
    tally.pose.append(err[:3])
    tally.exp.append(err[3:])
    tally.series.append((t, target.copy(), o.p.copy()))
    if sess.self_reenact:
        from engines.method.align import box_to_crop_coords
        tally.csim_tgt.append(float((o_emb * drv_emb).sum()))
        tgt_lm = box_to_crop_coords(drv_face.landmarks[:, :2], src.box, CROP)
        tally.nme.append(nme(o.landmarks, tgt_lm))
        tally.nme_aligned.append(nme(o.landmarks, tgt_lm, aligned=True))
        if inst.lpips is not None or inst.fid is not None or keep_strip:
            tgt_crop = crop_target(drv_rgb, src.box)
            if inst.lpips is not None:
                with torch.no_grad():
                    tally.lpips.append(float(inst.lpips(to_m11(out_img), to_m11(tgt_crop))[0]))
            if inst.fid is not None:
                tally.fid_out.append(inst.fid(out_img[None]))
                tally.fid_tgt.append(inst.fid(tgt_crop[None]))
            if keep_strip:
                sess.strip.append((tgt_crop, out_img))
    elif keep_strip:
        from PIL import Image
        h = CROP
        w = max(1, round(drv_rgb.shape[1] * h / drv_rgb.shape[0]))
        sess.strip.append((np.asarray(Image.fromarray(drv_rgb).resize((w, h), Image.BILINEAR)), out_img))


def drive(engine, inst: Instruments, clip: Path, sources: list[Source], modes: list[str], smooth: bool,
          max_frames: int | None, strip_frames: int, figures_for, cross: bool, log) -> list[Session]:
    """Drive every source (this clip's own; with cross, the others' too) with this clip."""
    sessions = []
    for src in sources:
        if src.clip != clip.stem and not cross:
            continue
        for mode in [*modes, "static"]:
            s = Session(engine, src, clip.stem, mode, smooth)
            s.figures = mode == modes[0] and figures_for(src.clip, clip.stem)
            sessions.append(s)
    n = frame_count(clip)
    n = min(n, max_frames) if max_frames else n
    picks = set(np.linspace(1, max(1, n - 1), strip_frames).round().astype(int).tolist())
    p_ref = None
    t0 = time.time()
    for i, t, rgb in clip_rgb(clip, max_frames, "--clips "):
        face, emb = inst.read_frame(rgb)
        if face is not None and p_ref is None:
            p_ref = face.p
        for s in sessions:
            if s.self_reenact and i <= s.source.frame_index:
                s.output(t, rgb)          # the source frame itself: sets the reference, not a target
                continue
            out = s.output(t, rgb)
            if face is None:
                continue
            measure(s, inst, t, out, face, emb, rgb, p_ref, s.figures and i in picks)
        if i % 50 == 0:
            log(f"  {clip.stem}: frame {i}/{n} ({time.time() - t0:.0f} s)")
    for s in sessions:
        s.close()
    return sessions


# ---------------------------------------------------------------------------- pooling
def pooled(tallies: list[Tally], names) -> dict:
    """Frame-weighted means over several (source, driver) pairs."""
    t = Tally()
    for x in tallies:
        t.frames += x.frames
        t.output_faces += x.output_faces
        for k in ("csim_src", "csim_tgt", "nme", "nme_aligned", "pose", "exp", "lpips", "fid_out", "fid_tgt"):
            getattr(t, k).extend(getattr(x, k))
    return t.summary(names)


# ---------------------------------------------------------------------------- main
def evaluate(engine, clips: list[Path], *, modes=("relative", "absolute"), smooth=True, cross=True,
             avatar_frame=0, max_frames=None, steps=(None, None), tune=True, lpips=None, fid_extractor=None,
             figure_dir: Path | None = None, figure_clips: str | None = None, strip_frames: int = 6,
             log=print) -> tuple[dict, list]:
    names = list(engine.zoo.param_names)
    inst = Instruments(engine.zoo.generator.resolution, lpips, fid_extractor)
    figures = []
    try:
        sources = [enroll_source(engine, inst, c, avatar_frame, steps, log, tune) for c in clips]
        pairs = []
        # a figure shows the source's face and the driver's frames: both clips must pass the filter
        allowed = {c.stem for c in clips if figure_clips is None or figure_clips in c.name}

        def figures_for(source: str, driver: str) -> bool:
            return figure_dir is not None and source in allowed and driver in allowed

        for clip in clips:
            sessions = drive(engine, inst, clip, sources, list(modes), smooth, max_frames, strip_frames,
                             figures_for, cross, log)
            for s in sessions:
                pairs.append({"source": s.source.clip, "driver": s.driver, "mode": s.mode,
                              "kind": "self" if s.self_reenact else "cross",
                              "summary": s.tally.summary(names), "_tally": s.tally})
                if s.figures:
                    figure_dir.mkdir(parents=True, exist_ok=True)
                    stem = f"{s.source.clip}__{s.driver}"
                    plot_series(s, names, figure_dir / f"{stem}_curves.png")
                    save_strip(s, figure_dir / f"{stem}_strip.png")
                    kind = "self" if s.self_reenact else "cross"
                    figures += [(f"{kind}: {s.source.clip} driven by {s.driver}, yaw / pitch / jawOpen",
                                 figure_dir / f"{stem}_curves.png"),
                                (f"{kind}: {s.source.clip} driven by {s.driver}, frames (top: driver, bottom: output)",
                                 figure_dir / f"{stem}_strip.png")]
    finally:
        inst.close()
    summary: dict = {}
    for kind in ("self", "cross"):
        for mode in [*modes, "static"]:
            ts = [p["_tally"] for p in pairs if p["kind"] == kind and p["mode"] == mode]
            if ts:
                summary.setdefault(kind, {})[mode] = pooled(ts, names)
    for p in pairs:
        del p["_tally"]
    return {"summary": summary, "pairs": pairs}, figures


def load_lpips(weights: str | None, log):
    if not weights:
        return None
    lin, alex = Path(weights) / "alex.pth", Path(weights) / "alexnet-owt-7be5be79.pth"
    if not lin.is_file():
        log(f"note: no {lin}; LPIPS skipped")
        return None
    from engines.models.lpips import LPIPS
    return LPIPS.from_checkpoint(lin, alex if alex.is_file() else None)


@main_guard
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--weights", help="weights folder: the vox256 files and/or LPIPS (alex.pth + AlexNet)")
    ap.add_argument("--directions", help="direction matrix (default: the zoo's)")
    ap.add_argument("--clips", nargs="+", required=True, help="video files or folders of them")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--report", type=Path, help="Markdown report (Table 1 shape, per-pair table, figures)")
    ap.add_argument("--figures", type=Path, help="figure folder (default: <report folder>/evaluation)")
    ap.add_argument("--figure-clips", help="only make figures for clips whose file name contains this "
                                           "(e.g. pexels: licence-restricted clips get no images)")
    ap.add_argument("--no-figures", action="store_true")
    ap.add_argument("--avatar-frame", "--avatar-frames", dest="avatar_frame", type=int, default=0,
                    help="index of the frame each clip's avatar is enrolled from (default 0: the first)")
    ap.add_argument("--max-frames", type=int, help="frames per clip (default: all)")
    ap.add_argument("--modes", default="relative,absolute", help="motion modes to evaluate (comma list)")
    ap.add_argument("--no-cross", action="store_true", help="self-reenactment only")
    ap.add_argument("--no-smooth", action="store_true", help="no temporal smoothing of the pose")
    ap.add_argument("--fast-enroll", action="store_true", help="40 inversion + 60 tuning steps (tests)")
    ap.add_argument("--invert-steps", type=int)
    ap.add_argument("--tune-steps", type=int)
    ap.add_argument("--no-tune", action="store_true", help="enroll without generator tuning (ablation)")
    ap.add_argument("--fid-features", help="FID feature network: FILE.onnx or module:factory (calibration.evaluation.fid)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("relative", "absolute") for m in modes):
        raise UserError(f"--modes {args.modes}: choose from relative, absolute")
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))  # noqa: E731
    clips = list_clips(args.clips)
    if len({c.stem for c in clips}) != len(clips):
        raise UserError("--clips: two clips share a file name")
    from calibration.evaluation.fid import load_extractor
    from streamer.reenact.engine import Engine
    engine = Engine(args.zoo, args.weights if args.zoo != "default" else None, args.directions, log=log,
                    progress=False)
    a_sha = sha256_file(Path(engine.zoo.directions_path))   # the matrix loaded now (the file may change later)
    lpips = load_lpips(args.weights, log)
    fid_extractor = load_extractor(args.fid_features)
    steps = (40, 60) if args.fast_enroll else (args.invert_steps, args.tune_steps)
    figure_dir = None if args.no_figures else (args.figures or ((args.report.parent if args.report else
                                                                   args.json.parent) / "evaluation"))
    t0 = time.time()
    results, figures = evaluate(engine, clips, modes=modes, smooth=not args.no_smooth, cross=not args.no_cross,
                                avatar_frame=args.avatar_frame, max_frames=args.max_frames, steps=steps,
                                tune=not args.no_tune,
                                lpips=lpips, fid_extractor=fid_extractor, figure_dir=figure_dir,
                                figure_clips=args.figure_clips, log=log)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    results["meta"] = {
        "command": "python -m calibration.evaluation.evaluate_video " + " ".join(shlex.quote(a) for a in argv_used),
        "zoo": args.zoo, "clips": [c.name for c in clips], "modes": modes, "smooth": not args.no_smooth,
        "directions_sha256": a_sha,
        "enroll": ("fast (40 inversion + 60 tuning steps)" if args.fast_enroll else
                   f"inversion {steps[0] or 'zoo default'} / tuning {steps[1] or 'zoo default'} steps")
                  + (", no generator tuning" if args.no_tune else ""),
        "lpips": lpips is not None, "fid": fid_extractor is not None, "seconds": time.time() - t0,
        "avatar_frame": args.avatar_frame, "max_frames": args.max_frames, "figure_clips": args.figure_clips}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    if args.report:
        write_report(results, args.report, figures)
    for kind, rows in results["summary"].items():
        for mode, r in rows.items():
            print(f"{kind:5s} {mode:8s} CSIM {fmt(r['csim'], 3)}  NME {fmt(r['nme'], 1)}  pose {fmt(r['pose'])} deg  "
                  f"exp {fmt(r['exp'], 3)}  LPIPS {fmt(r['lpips'], 3)}  FID {fmt(r['fid'], 1)}  "
                  f"({r['frames']} frames, output face {fmt(r['output_face_rate'], 3)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
