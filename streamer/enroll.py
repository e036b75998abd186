"""`python -m streamer.enroll --avatar photo.jpg [--zoo default] --out me.avatar`

Enrollment, once per avatar photo (paper §3.3 / official inference):
  1. align: MediaPipe landmarks -> the zoo's square crop (largest face if several);
  2. invert: find the latent whose image matches the crop (the zoo's encoder when it has one, then /
     otherwise optimisation of pixel + identity (SFace) + landmark (Net3D port) losses);
  3. pivotal tuning: tune a copy of G's high-resolution layers on the photo with the latent fixed, so
     identity details the latent space cannot express survive (official: 200 steps, lr 3e-3, convs of
     the 32-256 px blocks; here per zoo, see TUNING). The default zoo also tunes along the directions:
     on the photo warped to the poses z + A dp will be asked for (streamer.pose_targets);
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from calibration.shape_model import ShapeModel, shape_model_path
from engines.errors import UserError, main_guard
from engines.facelandmarker import FaceLandmarkerTorch, roi_from_landmarks
from engines.lowrank import fold_low_rank, low_rank_deltas
from engines.net3d import MediaPipeNet3D
from engines.views import VIEW_SIZE, net3d_view
from engines.zoo import load_zoo

from .align import CropRecipe, crop_box, crop_image
from .avatar import AvatarPack
from .framing import DISPLAY_SCALE
from .photo import read_photo
from .pose_targets import TargetRecipe, loss_weights, pose_targets

DISPLAY_SIZE = 256


@dataclass(frozen=True)
class Tuning:
    layers: tuple[str, ...]   # parameter-name prefixes that pivotal tuning may change
    steps: int
    lr: float
    targets: TargetRecipe | None = None   # also tune on pose targets (None: the photo only, the official way)
    batch: int = 6            # pose targets per step, beside the photo
    edges: float = 0.0        # weight of the L1 loss on image gradients (keeps the warped photo's edges sharp)
    crop_shift_up: float | None = None   # the crop's centre shift (None: as measured on the zoo's faces)
    # > 0: each tuned conv weight learns a rank-r delta U V (engines.lowrank), not a full one. Out of repr,
    # so adding it did not change recipe_key (cached full-tuned packs stay valid); recipe_key adds it when set
    rank: int = field(default=0, repr=False)


# default zoo: the transposed convs that make the 8 to 64 px maps (+ their BatchNorms), cosine-decayed
# lr, on the photo and its pose targets with pixel losses only: identity or landmark losses through a
# network left adversarial fringes (issue 14). The crop sits 0.04 (not the generator's own 0.11) of its
# side above the face's centre: tuned on targets, G takes the photo's framing, and the room below lets
# a dropped chin stay in frame (astronaut, wide-open mouths: a face in 100% of frames, was 93%).
# vox256: the official PTI.
TUNING = {
    "default": Tuning(("main.3.", "main.4.", "main.6.", "main.7.", "main.9.", "main.10.", "main.12."),
                      600, 2e-3, targets=TargetRecipe(), edges=2.0, crop_shift_up=0.04),
    "vox256": Tuning(tuple(f"convs.{i}." for i in range(4, 12)), 200, 3e-3),
}
INVERSION_STEPS = {"default": 150, "vox256": 100}
# what a tuned avatar must show (zoos tuned on pose targets): SFace to the photo at its own pose; a
# face in this share of the probe poses, and their mean SFace (normalised requests per parameter)
USABLE = (0.5, 0.75, 0.35)
USABILITY_PROBES = {"yaw": (-2.5, 2.5), "pitch": (-2.5, 2.5), "roll": (-2.5, 2.5), "jawOpen": (6.0,),
                    "mouthSmileLeft": (3.0,), "eyeBlinkLeft": (4.0,)}


def _to01(img: torch.Tensor) -> torch.Tensor:
    return (img + 1) / 2


def _from_uint8(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1


# Enrollment is an optimisation: with another torch thread count its float sums round differently and
# 270 steps later the pack differs (astronaut: latent max |diff| 0.66, 2 vs 1 threads; Pexels yaw
# correlation 0.77 vs 0.81). A fixed count per zoo makes a photo give the same avatar whichever tool
# enrolls it on this machine (they share one cache): one thread for the small default zoo (~40 s),
# every core for StyleGAN2-256, where one thread would take many minutes.
ENROLL_THREADS = {"default": 1}


def enroll_threads(zoo_name: str) -> int:
    return ENROLL_THREADS.get(zoo_name) or os.cpu_count() or 1


class Enroller:
    def __init__(self, zoo, progress: bool = True, log=print, threads: int | None = None, on_progress=None):
        """on_progress(stage, done, total): called as enrollment advances (stage: 'align', 'invert',
        'targets', 'tune', 'check'; done/total: steps of that stage), e.g. for a page's progress bar."""
        from calibration.identity import IdentityScorer
        self.zoo = zoo
        self.G = zoo.generator
        self.directions = zoo.directions()
        recipe = self.directions.meta.get("crop_recipe")
        self.recipe = CropRecipe(**recipe) if recipe else CropRecipe()
        if TUNING[zoo.name].crop_shift_up is not None:
            self.recipe = dataclasses.replace(self.recipe, shift_up=TUNING[zoo.name].crop_shift_up)
        self.landmarker = FaceLandmarkerTorch.from_task().requires_grad_(False)
        self.scorer = IdentityScorer(zoo.param_names)
        self.progress = progress
        self.log = log
        self.threads = threads or enroll_threads(zoo.name)
        self._stages = ("align", "invert", "tune")
        self.on_progress = on_progress

    def _stage(self, name: str) -> str:
        """Progress label of one enrollment stage, e.g. 'enroll 2/3 invert'."""
        k = self._stages.index(name) + 1 if name in self._stages else 0
        return f"enroll {k}/{len(self._stages)} {name}"

    def _report(self, stage: str, done: int = 0, total: int = 0) -> None:
        if self.on_progress is not None:
            self.on_progress(stage, done, total)

    # -- 1. align ------------------------------------------------------------------------------
    def align(self, photo: np.ndarray, name: str = "photo"):
        with MediaPipeNet3D("image", num_faces=4) as net3d:
            faces = net3d.read_all(photo)
            if not faces:
                raise UserError(f"no face found in {name}; use a photo with one clearly visible face")
            if len(faces) > 1:
                self.log(f"note: {len(faces)} faces in {name}; using the largest")
            box = crop_box(faces[0].landmarks, self.recipe)
            crop = crop_image(photo, box, self.G.resolution)
            display = crop_image(photo, (box[0], box[1], box[2] * DISPLAY_SCALE), DISPLAY_SIZE)
            target = _from_uint8(crop)
            reading = net3d.read(net3d_uint8(target))
        if reading is None:
            raise UserError(f"the face in {name} is too small or unclear to read after alignment; "
                            "use a sharper, more frontal photo")
        return box, crop, display, target, reading

    def avatar_p(self, photo: np.ndarray, reading) -> np.ndarray:
        """The avatar's own pose in the zoo's Net3D terms: the default zoo reads the aligned crop as it
        reads generated faces; a zoo with its own reader (vox256: DECA) reads the photo its way."""
        if "pose_reader" not in self.zoo.extra:
            return reading.p
        reader = self.zoo.pose_reader()
        try:
            face = reader.read(photo, 0)
        finally:
            reader.close()
        if face is None:
            raise UserError("Net3D found no face in the avatar photo")
        return face.p

    # -- losses ----------------------------------------------------------------------------------
    def _losses(self, img, target, roi, lm_target, emb_target):
        view = net3d_view(img)
        out = self.landmarker(view, roi)
        lm = out["landmarks"][..., :2]
        from calibration.identity import points_from_landmarks
        emb = self.scorer.embed_points(view, points_from_landmarks(out["landmarks"].detach()))
        return {"pix": (img - target).abs().mean(),
                "lm": (lm - lm_target).abs().mean() / roi[:, 2].mean() * 10,
                "id": 1 - (emb * emb_target).sum(-1).mean()}

    def _identity(self, imgs, emb_target) -> list[float]:
        """SFace cosine of each render [B,3,R,R] to the photo (nan where the runtime finds no face)."""
        from calibration.identity import points_from_landmarks
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

    def _usable(self, G, z, emb_target, name: str) -> dict:
        """Renders the tuned avatar at a few poses (USABILITY_PROBES); a photo whose avatar is not this
        face at its own pose, or falls apart when it moves, is refused with what was measured."""
        k, names = self.directions.k, self.directions.param_names
        dps = torch.zeros(sum(len(v) for v in USABILITY_PROBES.values()), k)
        row = 0
        for param, steps in USABILITY_PROBES.items():
            for v in steps:
                dps[row, names.index(param)] = v
                row += 1
        with torch.no_grad():
            shift = self.directions(dps) - self.directions(torch.zeros(1, k))
            imgs = G.synthesize(self.zoo.compose_latent(z.expand(len(dps), *z.shape[1:]), shift))
        cos = np.array(self._identity(imgs, emb_target))
        faces = int(np.isfinite(cos).sum())
        report = {"probe_faces": f"{faces}/{len(cos)}", "probe_sface": round(float(np.nan_to_num(cos).mean()), 3)}
        min_id, min_faces, min_probe_id = USABLE
        if faces < min_faces * len(cos) or report["probe_sface"] < min_probe_id:
            raise UserError(f"{name}: enrollment did not reach a usable avatar (a face in {faces} of {len(cos)} "
                            f"test poses, identity {report['probe_sface']:.2f} there; needs {min_faces:.0%} and "
                            f"{min_probe_id}); try a sharper, frontal, evenly lit photo")
        return report

    # -- 2. invert -----------------------------------------------------------------------------
    def invert(self, target, roi, lm_target, emb_target, steps: int) -> torch.Tensor:
        G = self.G
        encoder = self.zoo.encoder()
        with torch.no_grad():
            if encoder is not None:  # e4e (paper): one pass gives W+; optimisation only refines
                x = target if target.shape[-1] == 256 else F.interpolate(
                    target, size=(256, 256), mode="bicubic", align_corners=False)  # e4e reads 256 px
                z = encoder(x).float()
            else:  # start from the best of a few hundred prior samples (low-pass pixels)
                cands = G.sample_latents(256, generator=torch.Generator().manual_seed(0))
                err = (F.avg_pool2d(G.synthesize(cands), 4) - F.avg_pool2d(target, 4)).abs().mean((1, 2, 3))
                z = cands[err.argmin()][None].clone()
        if steps <= 0:
            return z
        z.requires_grad_(True)
        opt = torch.optim.Adam([z], lr=0.03)
        dim = float(np.prod(G.latent_shape))
        for i in tqdm(range(steps), desc=self._stage("invert"), disable=not self.progress, leave=False):
            self._report("invert", i, steps)
            parts = self._losses(G.synthesize(self.pivot(z)), target, roi, lm_target, emb_target)
            loss = parts["pix"] + parts["lm"] + parts["id"]
            if encoder is None:  # z-space prior: stay on the Gaussian shell |z|^2 ~ dim
                loss = loss + (z.pow(2).sum() / dim - 1).pow(2)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return z.detach()

    def pivot(self, latent):
        """The latent G renders for this avatar at zero pose change (vox256: after truncation)."""
        return self.zoo.compose_latent(latent, None)

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
        lpips = self.zoo.extra["perceptual"]() if "perceptual" in self.zoo.extra else None

        def step():
            img = G.synthesize(w)
            if lpips is not None:
                return 100 * F.mse_loss(img, target) + lpips(img, target).mean()
            return 10 * F.mse_loss(img, target) + (img - target).abs().mean()
        return step

    def _target_step(self, G, z, w, target, reading, tuning: Tuning):
        """Each step: the photo at the pivot plus `batch` pose targets at z + A dp (streamer.pose_targets),
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
            from calibration.avatar_directions import check_supported
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
        from calibration.identity import points_from_landmarks
        with torch.no_grad():
            pts = torch.as_tensor(points_from_landmarks(reading.landmarks), dtype=torch.float32)[None]
            emb_target = self.scorer.embed_points(net3d_view(target), pts)
        tuning = TUNING[self.zoo.name]
        if tune_steps is not None:
            tuning = dataclasses.replace(tuning, steps=tune_steps)
        if tune_rank is not None:
            tuning = dataclasses.replace(tuning, rank=tune_rank)
        steps = INVERSION_STEPS[self.zoo.name] if invert_steps is None else invert_steps
        z = self.invert(target, roi, lm_target, emb_target, steps)
        with torch.no_grad():
            before = self._quality(self.G.synthesize(self.pivot(z)), target, emb_target)
        tuned, quality, G_t = {}, {"inverted": before}, self.G
        tuning_report = None
        if tune:
            G_t, tuned, targets_report = self.tune(z, target, reading, tuning)
            tuning_report = {"layers": list(tuning.layers), "steps": tuning.steps, "lr": tuning.lr, "rank": tuning.rank,
                             **targets_report}
            with torch.no_grad():
                quality["tuned"] = self._quality(G_t.synthesize(self.pivot(z)), target, emb_target)
            if tuning.targets is not None:
                pivot_id = quality["tuned"]["sface_cosine"]
                if not pivot_id >= USABLE[0]:   # nan (no face) included
                    raise UserError(f"{name}: enrollment did not reach a usable avatar (identity of its own "
                                    f"render {pivot_id:.2f}, needs {USABLE[0]}); try a sharper, frontal photo")
                self._report("check")
                quality["moving"] = self._usable(G_t, z, emb_target, name)
        directions, directions_report = None, None
        if tune_directions:
            from calibration.avatar_directions import tune_directions as tune_a
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


def net3d_uint8(img: torch.Tensor) -> np.ndarray:
    """A generator-space image [1,3,R,R] in [-1,1] as the uint8 view Net3D reads."""
    from engines.views import to_uint8
    return to_uint8(net3d_view(img.float()))[0]


def versions() -> dict:
    import importlib.metadata as md
    out = {"torch": torch.__version__}
    for pkg in ("facereenact", "mediapipe"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def recipe_key(zoo_name: str) -> str:
    """A short hash of how a zoo enrolls: a changed recipe enrolls cached photos again."""
    tuning = TUNING[zoo_name]
    text = repr((tuning, INVERSION_STEPS[zoo_name], DISPLAY_SCALE) + ((("rank", tuning.rank),) if tuning.rank else ()))
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


def cached_pack_path(path: Path, zoo, tune_directions: int = 0) -> Path:
    """Where the enrollment of photo `path` is cached: by (content hash, zoo, A file, enrollment thread
    count, recipe, steps of tuning A to it)."""
    key = file_sha256(path)[:24]
    a_sha = file_sha256(Path(zoo.directions_path))[:12] if zoo.directions_path else "none"
    # t<threads>: packs from before enrollment pinned its thread count are not reused; r<recipe>:
    # nor packs enrolled by another recipe (steps, layers, pose targets)
    tuned_a = f"-d{tune_directions}" if tune_directions else ""
    root = _PRIVATE_CACHES.get(path.resolve().parent) or cache_dir()
    return root / (f"{key}-{zoo.name}-{a_sha}-t{enroll_threads(zoo.name)}-r{recipe_key(zoo.name)}{tuned_a}.avatar")


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
        cached = cached_pack_path(path, zoo, tune_directions)
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
            pack.meta["photo_sha256"] = file_sha256(path)
            if problem is None:
                try:
                    pack.save(cached)
                except OSError as e:   # the disk filled up meanwhile: keep the enrollment for this run
                    log(f"avatar: could not cache the enrollment at {cached} ({e.strerror or e}); "
                        f"this run uses it uncached")
    pack.check(zoo)
    return pack


@main_guard
def main(argv=None) -> int:
    from engines.zoo import ZOOS
    steps = lambda table: ", ".join(f"{z} {v}" for z, v in table.items())  # noqa: E731
    ap = argparse.ArgumentParser(prog="python -m streamer.enroll",
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
                    help=f"optimisation steps of the inversion (default per zoo: {steps(INVERSION_STEPS)})")
    ap.add_argument("--tune-steps", type=int,
                    help=f"pivotal tuning steps (default per zoo: {steps({z: t.steps for z, t in TUNING.items()})})")
    ap.add_argument("--tune-directions", type=int, nargs="?", const=200, default=0, metavar="STEPS",
                    help="also tune A to this avatar (default zoo; 200 steps when no number is given, ~2.5 min; "
                         "default: 0 = off)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads of the optimisation (default as every other tool enrolls: 1 for "
                         "the default zoo, all cores for vox256; other counts change the pack numerically)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars (default: show them)")
    ap.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)  # older name
    args = ap.parse_args(argv)
    zoo = load_zoo(args.zoo, args.weights)
    photo = read_photo(args.avatar)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    enroller = Enroller(zoo, not args.quiet, log, max(1, args.threads) if args.threads else None)
    pack = enroller.enroll(photo, Path(args.avatar).name, not args.no_tune, args.invert_steps, args.tune_steps,
                           args.tune_directions)
    pack.meta["photo_sha256"] = file_sha256(Path(args.avatar))
    out = args.out or Path(args.avatar).with_suffix(".avatar")
    pack.save(out)
    q = pack.meta["quality"]
    line = f"inverted: SFace {q['inverted']['sface_cosine']:.3f}, pixel MAE {q['inverted']['pixel_mae']:.1f}"
    if "tuned" in q:
        line += f"; tuned: SFace {q['tuned']['sface_cosine']:.3f}, pixel MAE {q['tuned']['pixel_mae']:.1f}"
    print(f"{line}; {pack.meta['seconds']:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
