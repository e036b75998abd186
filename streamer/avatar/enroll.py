"""`python -m streamer.avatar.enroll --avatar photo.jpg [--zoo default] --out me.avatar`

Enrollment, once per avatar photo (paper §3.3 / official inference):
  1. align: MediaPipe landmarks -> the zoo's square crop (largest face if several);
  2. invert: find the latent whose image matches the crop (the zoo's encoder when it has one, then /
     otherwise optimisation of pixel + identity (SFace) + landmark (Net3D port) losses);
  3. pivotal tuning: tune a copy of G's high-resolution layers on the photo with the latent fixed, so
     identity details the latent space cannot express survive (official: 200 steps, lr 3e-3, convs of
     the 32-256 px blocks; here per zoo, see engines.method.default_zoo and vox256: RECIPE). The default zoo also tunes along the directions:
     on the photo warped to the poses z + A dp will be asked for (streamer.avatar.pose_targets);
  4. optionally (`--tune-directions`) tune a copy of A to the avatar the same way
     (calibration.avatar_directions; default zoo; ~2.5 min on a 2-core CPU);
  5. report SFace cosine and pixel error before/after tuning, and save an avatar pack.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from calibration.avatar_directions import check_supported
from calibration.avatar_directions import tune_directions as tune_a
from calibration.identity import points_from_landmarks
from calibration.inversion import Inverter, chosen_face, net3d_uint8
from calibration.shape_model import ShapeModel, shape_model_path
from engines.accel.lowrank import fold_low_rank, low_rank_deltas
from engines.core.errors import UserError, main_guard
from engines.core.files import sha256_file
from engines.core.photo import read_photo
from engines.core.views import VIEW_SIZE, image_uint8, net3d_view
from engines.method.net3d import MediaPipeNet3D
from engines.method.recipes import Tuning
from engines.method.zoos import RECIPES, ZOOS, load_zoo
from engines.models.facelandmarker import roi_from_landmarks
from streamer.avatar.framing import DISPLAY_SCALE, OUT_SIZE, Framer, mirror_half, others_hidden, surroundings
from streamer.avatar.pack import AvatarPack
from streamer.avatar.pose_targets import loss_weights, pose_targets

DISPLAY_SIZE = 256


# what a tuned avatar must show (zoos tuned on pose targets): SFace to the photo at its own pose; a
# face in this share of the probe poses, and their mean SFace (normalised requests per parameter)
USABLE = (0.5, 0.75, 0.35)
USABILITY_PROBES = {"yaw": (-2.5, 2.5), "pitch": (-2.5, 2.5), "roll": (-2.5, 2.5), "jawOpen": (6.0,),
                    "mouthSmileLeft": (3.0,), "eyeBlinkLeft": (4.0,)}


def published_faces(imgs: torch.Tensor, display: np.ndarray) -> int:
    """How many renders [B,3,R,R] in [-1,1], framed as a session publishes them (the generator's
    square inside the photo's surroundings, OUT_SIZE px), the runtime finds a face in: what a viewer
    sees. A blurred avatar (a face of ~15 px seen through a thumbnail) is found in its generator crop
    but not once it is framed (Biden's half of a 96-px photo of two: 9 of 9 probes, a face in 8-11% of
    the frames it published)."""
    framer = Framer(display, DISPLAY_SCALE, OUT_SIZE)
    with MediaPipeNet3D("image") as reader:
        return sum(reader.read(framer(f.numpy())) is not None for f in image_uint8(imgs).cpu())


class Enroller(Inverter):
    """Inversion (calibration.inversion) plus pivotal tuning, the usability check and the pack."""

    def __init__(self, zoo, progress: bool = True, log=print, threads: int | None = None, on_progress=None):
        """on_progress(stage, done, total): called as enrollment advances (stage: 'align', 'invert',
        'targets', 'tune', 'check'; done/total: steps of that stage), e.g. for a page's progress bar."""
        super().__init__(zoo, zoo.recipe.tuning.crop_shift_up, progress, log, on_progress)
        self.threads = threads or zoo.recipe.threads()
        self._stages = ("align", "invert", "tune")

    # -- 1. align ------------------------------------------------------------------------------
    def align(self, photo: np.ndarray, name: str = "photo"):
        """-> (box, crop, display, target, reading): locate's crop plus the photo around it, a face cut
        by the photo's left or right edge first made whole (mirror_half), the people around it blurred
        out of the display (others_hidden)."""
        with MediaPipeNet3D("image", num_faces=4) as net3d:
            faces = net3d.find_all(photo)
            whole = mirror_half(photo, chosen_face(faces).landmarks) if faces else photo
            # a widened photo is read again: its faces moved, and the cut one is whole now
            box, crop, target, reading = self.locate(whole, name, net3d, faces if whole is photo else None)
            display = surroundings(whole, box, DISPLAY_SCALE, DISPLAY_SIZE)
            return box, crop, self._alone(display, net3d), target, reading

    @staticmethod
    def _alone(display: np.ndarray, net3d: MediaPipeNet3D) -> np.ndarray:
        """The display with every face but the avatar's (the one nearest its centre) blurred: in a group
        photo the neighbours stand in the published frame, and a reader that takes the largest face it
        sees (MediaPipe; a call's face tracker) could take theirs for the avatar's."""
        faces = net3d.find_every(display)
        if len(faces) < 2:
            return display
        middle = np.array(display.shape[1::-1]) / 2
        centres = [(np.array(f.box[:2]) + f.box[2:]) / 2 for f in faces]
        x0, y0, x1, y1 = faces[int(np.argmin([np.hypot(*(c - middle)) for c in centres]))].box
        # a second reading of the avatar's own face (from another window) has its centre inside its box
        others = [f.box for f, (cx, cy) in zip(faces, centres) if not (x0 < cx < x1 and y0 < cy < y1)]
        return others_hidden(display, others)

    def avatar_p(self, photo: np.ndarray, reading) -> np.ndarray:
        """The avatar's own pose in the zoo's Net3D terms: the default zoo reads the aligned crop as it
        reads generated faces; a zoo with its own reader (vox256: DECA) reads the photo its way."""
        if self.zoo.reads_own_output:
            return reading.p
        reader = self.zoo.pose_reader()
        try:
            face = reader.read(photo, 0)
        finally:
            reader.close()
        if face is None:
            raise UserError("Net3D found no face in the avatar photo")
        return face.p

    def _identity(self, imgs, emb_target) -> list[float]:
        """SFace cosine of each render [B,3,R,R] to the photo (nan where the runtime finds no face)."""
        out = []
        with torch.no_grad(), MediaPipeNet3D("image") as net3d:
            for img in imgs.split(1):
                face = net3d.read(net3d_uint8(img))
                if face is None:
                    out.append(float("nan"))
                    continue
                pts = torch.as_tensor(points_from_landmarks(face.landmarks), dtype=torch.float32)[None]
                out.append(float((self.scorer.embed_points(net3d_view(img), pts) * emb_target).sum()))
        return out

    def _quality(self, img, target, emb_target) -> dict:
        mae = float((img - target).abs().mean() * 127.5)
        return {"sface_cosine": round(self._identity(img, emb_target)[0], 4), "pixel_mae": round(mae, 2)}

    def _usable(self, G, z, emb_target, name: str, display: np.ndarray) -> dict:
        """Renders the tuned avatar at rest and at a few poses (USABILITY_PROBES); a photo whose avatar
        is not this face at its own pose, falls apart when it moves, or is not found as a face once
        framed for publishing, is refused with what was measured."""
        k, names = self.directions.k, self.directions.param_names
        dps = torch.zeros(1 + sum(len(v) for v in USABILITY_PROBES.values()), k)   # row 0: at rest
        row = 1
        for param, steps in USABILITY_PROBES.items():
            for v in steps:
                dps[row, names.index(param)] = v
                row += 1
        with torch.no_grad():
            shift = self.directions(dps) - self.directions(torch.zeros(1, k))
            imgs = G.synthesize(self.zoo.compose_latent(z.expand(len(dps), *z.shape[1:]), shift))
        cos = np.array(self._identity(imgs[1:], emb_target))
        faces = int(np.isfinite(cos).sum())
        shown = published_faces(imgs, display)
        report = {"probe_faces": f"{faces}/{len(cos)}", "probe_sface": round(float(np.nan_to_num(cos).mean()), 3),
                  "published_faces": f"{shown}/{len(imgs)}"}
        min_id, min_faces, min_probe_id = USABLE
        if faces < min_faces * len(cos) or report["probe_sface"] < min_probe_id:
            raise UserError(f"{name}: enrollment did not reach a usable avatar (a face in {faces} of {len(cos)} "
                            f"test poses, identity {report['probe_sface']:.2f} there; needs {min_faces:.0%} and "
                            f"{min_probe_id}); try a sharper, frontal, evenly lit photo")
        if shown < min_faces * len(imgs):
            raise UserError(f"{name}: enrollment did not reach a usable avatar (its face is found in {shown} of "
                            f"{len(imgs)} test frames as they would be published, needs {min_faces:.0%}: too "
                            f"blurred or small); try a photo where the face is larger and sharper")
        return report

    # -- 3. pivotal tuning ---------------------------------------------------------------------
    def tune(self, z, target, reading, tuning: Tuning):
        import copy
        G = copy.deepcopy(self.G)
        names = [n for n, _ in G.named_parameters() if n.startswith(tuning.layers)]
        G.requires_grad_(False)
        params = low_rank_deltas(G, names, tuning.rank) if tuning.rank else []
        params += [p for n, p in G.named_parameters() if n in names]   # (a parametrized weight left this list)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=tuning.lr)
        w = self.pivot(z).detach()
        if tuning.targets is None:
            step = self._official_step(G, w, target)
            report = {}
        else:
            step, report = self._target_step(G, z, w, target, reading, tuning)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, tuning.steps) if tuning.targets else None
        for i in tqdm(range(tuning.steps), desc=self._stage("tune"), disable=not self.progress, leave=False):
            self._report("tune", i, tuning.steps)
            loss = step()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        G.requires_grad_(False)
        fold_low_rank(G)
        tuned = {n: p.detach().clone() for n, p in G.named_parameters() if n in names}
        # BatchNorm running statistics stay as they were (eval mode); only weights change
        return G, tuned, report

    def _official_step(self, G, w, target):
        """PTI as shipped with the paper: 100 L2 + LPIPS(alex), or L2 + L1 without the LPIPS files."""
        lpips = self.zoo.perceptual_factory() if self.zoo.perceptual_factory is not None else None

        def step():
            img = G.synthesize(w)
            if lpips is not None:
                return 100 * F.mse_loss(img, target) + lpips(img, target).mean()
            return 10 * F.mse_loss(img, target) + (img - target).abs().mean()
        return step

    def _target_step(self, G, z, w, target, reading, tuning: Tuning):
        """Each step: the photo at the pivot plus `batch` pose targets at z + A dp (streamer.avatar.pose_targets),
        pixel losses weighted toward mouth and eyes, plus an L1 on image gradients."""
        recipe = tuning.targets
        self._report("targets")
        with MediaPipeNet3D("image") as net3d:
            dps, images, gain = pose_targets(target, reading, self.directions, recipe, net3d,
                                             ShapeModel.load(shape_model_path(self.zoo.name)))
        k = self.directions.k
        with torch.no_grad():
            shift = self.directions(dps) - self.directions(torch.zeros(1, k))
            latents = torch.cat([w, self.zoo.compose_latent(z.expand(len(dps), *z.shape[1:]), shift)])
        images = torch.cat([target, images])
        weights = loss_weights(reading, target.shape[-1], recipe)
        gen = torch.Generator().manual_seed(1)

        def step():
            idx = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randint(len(dps), (tuning.batch,), generator=gen)])
            d = G.synthesize(latents[idx]) - images[idx]
            loss = (weights * (10 * d.pow(2) + d.abs())).mean()
            if tuning.edges:
                loss = loss + tuning.edges * ((d[..., 1:, :] - d[..., :-1, :]).abs().mean()
                                              + (d[..., 1:] - d[..., :-1]).abs().mean())
            return loss
        return step, {"targets": len(dps), "expression_gains": [round(float(g), 3) for g in gain]}

    # -- all ---------------------------------------------------------------------------------------
    def enroll(self, photo: np.ndarray, name: str = "photo", tune: bool = True,
               invert_steps: int | None = None, tune_steps: int | None = None,
               tune_directions: int = 0, tune_rank: int | None = None) -> AvatarPack:
        """tune_directions: steps of tuning A to this avatar (0: the zoo's A is used as it is);
        tune_rank: the rank of the tuned conv deltas (None: the zoo's recipe, 0: full weights)."""
        if tune_directions:
            check_supported(self.zoo.name)   # before minutes of inversion, not after
        caller = torch.get_num_threads()
        torch.set_num_threads(self.threads)  # also pins this OS thread (a worker's own count may differ)
        self._stages = ("align", "invert") + (("tune",) if tune else ()) + \
            (("tune directions",) if tune_directions else ())
        try:
            pack = self._enroll(photo, name, tune, invert_steps, tune_steps, tune_directions, tune_rank)
        finally:
            torch.set_num_threads(caller)
        pack.meta["threads"] = self.threads
        q = pack.meta["quality"].get("tuned") or pack.meta["quality"]["inverted"]
        self.log(f"avatar: enrolled {name} in {pack.meta['seconds']:.0f} s (identity {q['sface_cosine']:.2f}, "
                 "SFace cosine of its render to the photo)")
        return pack

    def _enroll(self, photo, name, tune, invert_steps, tune_steps, tune_directions=0, tune_rank=None) -> AvatarPack:
        t0 = time.time()
        self._report("align")
        box, crop, display, target, reading = self.align(photo, name)
        if self.progress:
            self.log(f"{self._stage('align')}: face crop {box[2]:.0f} px in {name} ({time.time() - t0:.1f} s)")
        roi = roi_from_landmarks(torch.as_tensor(reading.landmarks[None, :, :2]), VIEW_SIZE, VIEW_SIZE).float()
        lm_target = torch.as_tensor(reading.landmarks[None, :, :2])
        with torch.no_grad():
            pts = torch.as_tensor(points_from_landmarks(reading.landmarks), dtype=torch.float32)[None]
            emb_target = self.scorer.embed_points(net3d_view(target), pts)
        tuning = self.zoo.recipe.tuning
        if tune_steps is not None:
            tuning = dataclasses.replace(tuning, steps=tune_steps)
        if tune_rank is not None:
            tuning = dataclasses.replace(tuning, rank=tune_rank)
        steps = self.zoo.recipe.inversion_steps if invert_steps is None else invert_steps
        z = self.invert(target, roi, lm_target, emb_target, steps)
        with torch.no_grad():
            before = self._quality(self.G.synthesize(self.pivot(z)), target, emb_target)
        tuned, quality, G_t = {}, {"inverted": before}, self.G
        tuning_report = None
        if tune:
            G_t, tuned, targets_report = self.tune(z, target, reading, tuning)
            tuning_report = {"layers": list(tuning.layers), "steps": tuning.steps, "lr": tuning.lr, "rank": tuning.rank,
                             **targets_report}
            if tuning.targets is not None:   # where G was tuned: the reenactor keeps requests near it
                tuning_report["request_sd"] = [round(v, 4) for v in tuning.targets.request_sd(self.directions)]
            with torch.no_grad():
                quality["tuned"] = self._quality(G_t.synthesize(self.pivot(z)), target, emb_target)
            if tuning.targets is not None:
                pivot_id = quality["tuned"]["sface_cosine"]
                if not pivot_id >= USABLE[0]:   # nan (no face) included
                    raise UserError(f"{name}: enrollment did not reach a usable avatar (identity of its own "
                                    f"render {pivot_id:.2f}, needs {USABLE[0]}); try a sharper, frontal photo")
                self._report("check")
                quality["moving"] = self._usable(G_t, z, emb_target, name, display)
        directions, directions_report = None, None
        if tune_directions:
            A, directions_report = tune_a(self.zoo, G_t, self.pivot(z).detach(), self.directions, tune_directions,
                                          progress=self.progress, log=self.log)
            directions = {"weight": A.linear.weight.detach().clone(), "bias": A.linear.bias.detach().clone()}
        meta = {"p": [float(v) for v in self.avatar_p(photo, reading)], "param_names": list(self.zoo.param_names),
                "box": [float(v) for v in box], "display_scale": DISPLAY_SCALE, "quality": quality,
                "inversion_steps": steps,
                "tuning": tuning_report,
                "tuned_directions": directions_report,
                "seconds": round(time.time() - t0, 1), "versions": versions()}
        return AvatarPack(self.zoo.name, z, tuned, crop, display, meta, directions)


def versions() -> dict:
    import importlib.metadata as md
    out = {"torch": torch.__version__}
    for pkg in ("facereenact", "mediapipe"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def recipe_key(zoo_name: str) -> str:
    """A short hash of how a zoo enrolls: a changed recipe enrolls cached photos again."""
    recipe = RECIPES[zoo_name]
    tuning = recipe.tuning
    text = repr((tuning, recipe.inversion_steps, DISPLAY_SCALE) + ((("rank", tuning.rank),) if tuning.rank else ()))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def cache_dir() -> Path:
    base = os.environ.get("FACEREENACT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "facereenact")
    return Path(base) / "avatars"


_PRIVATE_CACHES: dict[Path, Path] = {}   # photo folder -> where its enrollments are cached


def private_cache(photo_dir: str | Path, cache: str | Path | None) -> None:
    """Cache enrollments of the photos in `photo_dir` in `cache` instead of the user cache (None: undo).
    The server's upload folder uses this, so packs holding an uploaded face are deleted with it."""
    folder = Path(photo_dir).resolve()
    if cache is None:
        _PRIVATE_CACHES.pop(folder, None)
    else:
        _PRIVATE_CACHES[folder] = Path(cache)


def cache_root(path: Path) -> Path:
    """The folder photo `path`'s enrollments are cached in: its folder's private cache, or the user's."""
    return _PRIVATE_CACHES.get(path.resolve().parent) or cache_dir()


def _cache_problem(cached: Path) -> str | None:
    """Why a pack cannot be saved at `cached`, or None: checked before the minute an enrollment takes."""
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:             # the cache root lies under a regular file, no permission, ...
        return f"cannot create the folder {cached.parent} ({e.strerror or e})"
    if os.path.lexists(cached) and not cached.is_file():
        return f"{cached} exists and is not a file"
    if not os.access(cached.parent, os.W_OK):
        return f"{cached.parent} is not writable"
    return None


def cached_pack_path(path: Path, zoo, tune_directions: int = 0, photo_sha: str | None = None) -> Path:
    """Where the enrollment of photo `path` is cached: by (content hash — `photo_sha` when the caller
    has it —, zoo, A file, enrollment thread count, recipe, steps of tuning A to it)."""
    key = (photo_sha or sha256_file(path))[:24]
    a_sha = sha256_file(Path(zoo.directions_path))[:12] if zoo.directions_path else "none"
    # t<threads>: packs from before enrollment pinned its thread count are not reused; r<recipe>:
    # nor packs enrolled by another recipe (steps, layers, pose targets)
    tuned_a = f"-d{tune_directions}" if tune_directions else ""
    return cache_root(path) / (f"{key}-{zoo.name}-{a_sha}-t{zoo.recipe.threads()}-r{recipe_key(zoo.name)}{tuned_a}.avatar")


def load_or_enroll(avatar: str | Path, zoo, progress: bool = True, log=print,
                   tune_directions: int = 0, on_progress=None) -> AvatarPack:
    """A pack file is loaded; a photo is enrolled once and cached by (content hash, zoo, A file,
    enrollment thread count, steps of tuning A to it). A cached pack that does not load or does not fit
    the zoo is enrolled again; a cache that cannot be written is reported and the run goes on uncached."""
    path = Path(avatar)
    if not path.is_file():
        raise UserError(f"avatar not found: {path}")
    if path.suffix in (".avatar", ".safetensors"):
        pack = AvatarPack.load(path)
        if tune_directions and not pack.directions:
            log(f"avatar: {path.name} was enrolled without --tune-directions; it uses the zoo's A "
                f"(enroll the photo with --tune-directions to tune A to it)")
    else:
        photo_sha = sha256_file(path)
        cached = cached_pack_path(path, zoo, tune_directions, photo_sha)
        pack = None
        if cached.is_file():
            try:
                pack = AvatarPack.load(cached)
                pack.check(zoo)
                log(f"avatar: cached enrollment {cached}")
            except UserError as e:   # a crash while it was written, a damaged disk, another program
                pack = None
                log(f"avatar: the cached enrollment is damaged and is made again ({e})")
                try:
                    cached.unlink()
                except OSError:
                    pass
        if pack is None:
            photo = read_photo(path)
            problem = _cache_problem(cached)
            if problem:
                log(f"avatar: enrolling {path.name} without caching it ({problem})")
            else:
                log(f"avatar: enrolling {path.name} (once; cached at {cached})")
            pack = Enroller(zoo, progress, log, on_progress=on_progress).enroll(photo, path.name,
                                                                                tune_directions=tune_directions)
            pack.meta["photo_sha256"] = photo_sha
            if problem is None:
                try:
                    pack.save(cached)
                except OSError as e:   # the disk filled up meanwhile: keep the enrollment for this run
                    log(f"avatar: could not cache the enrollment at {cached} ({e.strerror or e}); "
                        f"this run uses it uncached")
    pack.check(zoo)
    return pack


@dataclass(frozen=True)
class EnrollConfig:
    """`python -m streamer.avatar.enroll`, built once from its flags."""
    avatar: Path
    out: Path
    zoo: str = "default"
    weights: str | None = None
    tune: bool = True                  # pivotal tuning
    invert_steps: int | None = None    # None: the zoo recipe's
    tune_steps: int | None = None
    tune_directions: int = 0           # steps of tuning A to the avatar (0: off)
    threads: int | None = None         # None: the zoo recipe's count
    progress: bool = True

    @classmethod
    def from_args(cls, args) -> "EnrollConfig":
        avatar = Path(args.avatar)
        return cls(avatar, args.out or avatar.with_suffix(".avatar"), args.zoo, args.weights, not args.no_tune,
                   args.invert_steps, args.tune_steps, args.tune_directions,
                   max(1, args.threads) if args.threads else None, not args.quiet)


@main_guard
def main(argv=None) -> int:
    steps = lambda table: ", ".join(f"{z} {v}" for z, v in table.items())  # noqa: E731
    ap = argparse.ArgumentParser(prog="python -m streamer.avatar.enroll",
                                 description="Enroll an avatar photo into an avatar pack (run_stream.py also "
                                             "enrolls and caches photos by itself; this writes a pack file)")
    ap.add_argument("--avatar", required=True, help="required: portrait photo (JPEG/PNG/WebP)")
    ap.add_argument("--zoo", default="default", choices=ZOOS,
                    help="model set: default (64 px DCGAN, CPU, from pip) or vox256 (the paper's models, "
                         "your weights: --weights DIR) (default: default)")
    ap.add_argument("--weights", metavar="DIR",
                    help="vox256 weights folder (python -m engines.weights fetch --dir DIR; default: none)")
    ap.add_argument("--out", type=Path, help="pack path (default: <photo>.avatar beside the photo)")
    ap.add_argument("--no-tune", action="store_true", help="skip pivotal tuning (default: tune)")
    ap.add_argument("--invert-steps", type=int,
                    help="optimisation steps of the inversion (default per zoo: "
                         f"{steps({z: r.inversion_steps for z, r in RECIPES.items()})})")
    ap.add_argument("--tune-steps", type=int,
                    help=f"pivotal tuning steps (default per zoo: {steps({z: r.tuning.steps for z, r in RECIPES.items()})})")
    ap.add_argument("--tune-directions", type=int, nargs="?", const=200, default=0, metavar="STEPS",
                    help="also tune A to this avatar (default zoo; 200 steps when no number is given, ~2.5 min; "
                         "default: 0 = off)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads of the optimisation (default as every other tool enrolls: 1 for "
                         "the default zoo, all cores for vox256; other counts change the pack numerically)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars (default: show them)")
    ap.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)  # older name
    cfg = EnrollConfig.from_args(ap.parse_args(argv))
    zoo = load_zoo(cfg.zoo, cfg.weights)
    photo = read_photo(cfg.avatar)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    enroller = Enroller(zoo, cfg.progress, log, cfg.threads)
    pack = enroller.enroll(photo, cfg.avatar.name, cfg.tune, cfg.invert_steps, cfg.tune_steps, cfg.tune_directions)
    pack.meta["photo_sha256"] = sha256_file(cfg.avatar)
    pack.save(cfg.out)
    out = cfg.out
    q = pack.meta["quality"]
    line = f"inverted: SFace {q['inverted']['sface_cosine']:.3f}, pixel MAE {q['inverted']['pixel_mae']:.1f}"
    if "tuned" in q:
        line += f"; tuned: SFace {q['tuned']['sface_cosine']:.3f}, pixel MAE {q['tuned']['pixel_mae']:.1f}"
    print(f"{line}; {pack.meta['seconds']:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
