"""`python -m streamer.enroll --avatar photo.jpg [--zoo default] --out me.avatar`

Enrollment, once per avatar photo (paper §3.3 / official inference):
  1. align: MediaPipe landmarks -> the zoo's square crop (largest face if several);
  2. invert: find the latent whose image matches the crop (the zoo's encoder when it has one, then /
     otherwise optimisation of pixel + identity (SFace) + landmark (Net3D port) losses);
  3. pivotal tuning: tune a copy of G's high-resolution layers on the photo with the latent fixed, so
     identity details the latent space cannot express survive (official: 200 steps, lr 3e-3, convs of
     the 32-256 px blocks; here per zoo, see TUNING);
  4. optionally (`--tune-directions`) tune a copy of A to the avatar the same way
     (calibration.avatar_directions; default zoo; ~2.5 min on a 2-core CPU);
  5. report SFace cosine and pixel error before/after tuning, and save an avatar pack.
"""
from __future__ import annotations

import argparse
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

from engines.errors import UserError, main_guard
from engines.facelandmarker import FaceLandmarkerTorch, roi_from_landmarks
from engines.net3d import MediaPipeNet3D
from engines.views import VIEW_SIZE, net3d_view
from engines.zoo import load_zoo

from .align import CropRecipe, crop_box, crop_image
from .avatar import AvatarPack
from .photo import read_photo

DISPLAY_SIZE = 256


@dataclass(frozen=True)
class Tuning:
    layers: tuple[str, ...]   # parameter-name prefixes that pivotal tuning may change
    steps: int
    lr: float
    locality: float = 0.0     # weight of the landmark locality regulariser (0: off, the official way)


# default zoo: the three transposed convs that make the 16, 32 and 64 px maps (+ their BatchNorms),
# the DCGAN analogue of the official choice of the 32-256 px synthesis convs.
TUNING = {
    "default": Tuning(("main.6.", "main.7.", "main.9.", "main.10.", "main.12."), 120, 1e-3, locality=4.0),
    "vox256": Tuning(tuple(f"convs.{i}." for i in range(4, 12)), 200, 3e-3),
}
INVERSION_STEPS = {"default": 150, "vox256": 100}


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
    def __init__(self, zoo, progress: bool = True, log=print, threads: int | None = None):
        from calibration.identity import IdentityScorer
        self.zoo = zoo
        self.G = zoo.generator
        self.directions = zoo.directions()
        recipe = self.directions.meta.get("crop_recipe")
        self.recipe = CropRecipe(**recipe) if recipe else CropRecipe()
        self.landmarker = FaceLandmarkerTorch.from_task().requires_grad_(False)
        self.scorer = IdentityScorer(zoo.param_names)
        self.progress = progress
        self.log = log
        self.threads = threads or enroll_threads(zoo.name)

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
            display = crop_image(photo, box, DISPLAY_SIZE)
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

    def _quality(self, img, target, emb_target) -> dict:
        with torch.no_grad():
            from calibration.identity import points_from_landmarks
            view = net3d_view(img)
            with MediaPipeNet3D("image") as net3d:
                face = net3d.read(net3d_uint8(img))
            if face is None:
                cos = float("nan")
            else:
                pts = torch.as_tensor(points_from_landmarks(face.landmarks), dtype=torch.float32)[None]
                cos = float((self.scorer.embed_points(view, pts) * emb_target).sum())
            mae = float((img - target).abs().mean() * 127.5)
        return {"sface_cosine": round(cos, 4), "pixel_mae": round(mae, 2)}

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
        for _ in tqdm(range(steps), desc="invert", disable=not self.progress, leave=False):
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
    def tune(self, z, target, roi, lm_target, emb_target, tuning: Tuning):
        import copy
        G = copy.deepcopy(self.G)
        names = [n for n, _ in G.named_parameters() if n.startswith(tuning.layers)]
        params = [p for n, p in G.named_parameters() if n in names]
        G.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=tuning.lr)
        w = self.pivot(z).detach()
        lpips = self.zoo.extra["perceptual"]() if "perceptual" in self.zoo.extra else None
        gen = torch.Generator().manual_seed(1)
        k, a = self.directions.k, self.directions.shift_scale
        for _ in tqdm(range(tuning.steps), desc="tune", disable=not self.progress, leave=False):
            img = G.synthesize(w)
            if lpips is not None:  # official: 100 L2 + LPIPS(alex)
                loss = 100 * F.mse_loss(img, target) + lpips(img, target).mean()
            else:  # no LPIPS weights: L2 + L1 pixels, SFace identity and landmark terms
                parts = self._losses(img, target, roi, lm_target, emb_target)
                loss = 10 * F.mse_loss(img, target) + parts["pix"] + parts["id"] + parts["lm"]
            if tuning.locality:
                loss = loss + tuning.locality * self._locality(G, z, roi, gen, k, a)
            opt.zero_grad()
            loss.backward()
            opt.step()
        G.requires_grad_(False)
        tuned = {n: p.detach().clone() for n, p in G.named_parameters() if n in names}
        # BatchNorm running statistics stay as they were (eval mode); only weights change
        return G, tuned

    def _locality(self, G_t, z, roi, gen, k: int, a: float, n: int = 2) -> torch.Tensor:
        """Tuning must not undo the directions: at latents the avatar will visit (pivot + A dp for
        random dp), the tuned G must put the face's landmarks where the original G puts them. Only the
        geometry is held, so appearance (the identity details tuning is for) stays free. This is PTI's
        locality regulariser, measured on landmarks and sampled along the learned directions."""
        dp = (torch.rand(n, k, generator=gen) * 2 - 1) * a * (torch.rand(n, k, generator=gen) < 0.3)
        with torch.no_grad():
            shift = self.directions(dp) - self.directions(torch.zeros(1, k))
            zr = self.zoo.compose_latent(z.expand(n, *z.shape[1:]), shift)
            ref = self.landmarker(net3d_view(self.G.synthesize(zr)), roi.expand(n, 5))["landmarks"][..., :2]
        got = self.landmarker(net3d_view(G_t.synthesize(zr)), roi.expand(n, 5))["landmarks"][..., :2]
        return (got - ref).abs().mean() / roi[:, 2].mean() * 10

    # -- all ---------------------------------------------------------------------------------------
    def enroll(self, photo: np.ndarray, name: str = "photo", tune: bool = True,
               invert_steps: int | None = None, tune_steps: int | None = None,
               tune_directions: int = 0) -> AvatarPack:
        """tune_directions: steps of tuning A to this avatar (0: the zoo's A is used as it is)."""
        if tune_directions:
            from calibration.avatar_directions import check_supported
            check_supported(self.zoo.name)   # before minutes of inversion, not after
        caller = torch.get_num_threads()
        torch.set_num_threads(self.threads)  # also pins this OS thread (a worker's own count may differ)
        try:
            pack = self._enroll(photo, name, tune, invert_steps, tune_steps, tune_directions)
        finally:
            torch.set_num_threads(caller)
        pack.meta["threads"] = self.threads
        return pack

    def _enroll(self, photo, name, tune, invert_steps, tune_steps, tune_directions=0) -> AvatarPack:
        t0 = time.time()
        box, crop, display, target, reading = self.align(photo, name)
        roi = roi_from_landmarks(torch.as_tensor(reading.landmarks[None, :, :2]), VIEW_SIZE, VIEW_SIZE).float()
        lm_target = torch.as_tensor(reading.landmarks[None, :, :2])
        from calibration.identity import points_from_landmarks
        with torch.no_grad():
            pts = torch.as_tensor(points_from_landmarks(reading.landmarks), dtype=torch.float32)[None]
            emb_target = self.scorer.embed_points(net3d_view(target), pts)
        tuning = TUNING[self.zoo.name]
        if tune_steps is not None:
            tuning = Tuning(tuning.layers, tune_steps, tuning.lr, tuning.locality)
        steps = INVERSION_STEPS[self.zoo.name] if invert_steps is None else invert_steps
        z = self.invert(target, roi, lm_target, emb_target, steps)
        with torch.no_grad():
            before = self._quality(self.G.synthesize(self.pivot(z)), target, emb_target)
        tuned, quality, G_t = {}, {"inverted": before}, self.G
        if tune:
            G_t, tuned = self.tune(z, target, roi, lm_target, emb_target, tuning)
            with torch.no_grad():
                quality["tuned"] = self._quality(G_t.synthesize(self.pivot(z)), target, emb_target)
        directions, directions_report = None, None
        if tune_directions:
            from calibration.avatar_directions import tune_directions as tune_a
            A, directions_report = tune_a(self.zoo, G_t, self.pivot(z).detach(), self.directions, tune_directions,
                                          progress=self.progress, log=self.log)
            directions = {"weight": A.linear.weight.detach().clone(), "bias": A.linear.bias.detach().clone()}
        meta = {"p": [float(v) for v in self.avatar_p(photo, reading)], "param_names": list(self.zoo.param_names),
                "box": [float(v) for v in box], "quality": quality,
                "inversion_steps": steps,
                "tuning": {"layers": list(tuning.layers), "steps": tuning.steps, "lr": tuning.lr,
                           "locality": tuning.locality} if tune else None,
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


def cache_dir() -> Path:
    base = os.environ.get("FACEREENACT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "facereenact")
    return Path(base) / "avatars"


def load_or_enroll(avatar: str | Path, zoo, progress: bool = True, log=print,
                   tune_directions: int = 0) -> AvatarPack:
    """A pack file is loaded; a photo is enrolled once and cached by (content hash, zoo, A file,
    enrollment thread count, steps of tuning A to it)."""
    path = Path(avatar)
    if not path.is_file():
        raise UserError(f"avatar not found: {path}")
    if path.suffix in (".avatar", ".safetensors"):
        pack = AvatarPack.load(path)
        if tune_directions and not pack.directions:
            log(f"avatar: {path.name} was enrolled without --tune-directions; it uses the zoo's A "
                f"(enroll the photo with --tune-directions to tune A to it)")
    else:
        key = file_sha256(path)[:24]
        a_sha = file_sha256(Path(zoo.directions_path))[:12] if zoo.directions_path else "none"
        # t<threads>: packs from before enrollment pinned its thread count are not reused
        tuned_a = f"-d{tune_directions}" if tune_directions else ""
        cached = cache_dir() / f"{key}-{zoo.name}-{a_sha}-t{enroll_threads(zoo.name)}{tuned_a}.avatar"
        if cached.is_file():
            try:
                pack = AvatarPack.load(cached)
            except UserError:
                cached.unlink(missing_ok=True)  # a damaged cache entry is rebuilt, not fatal
                return load_or_enroll(avatar, zoo, progress, log, tune_directions)
            log(f"avatar: cached enrollment {cached}")
        else:
            photo = read_photo(path)
            log(f"avatar: enrolling {path.name} (once; cached at {cached})")
            pack = Enroller(zoo, progress, log).enroll(photo, path.name, tune_directions=tune_directions)
            pack.meta["photo_sha256"] = file_sha256(path)
            pack.save(cached)
    if pack.zoo != zoo.name:
        raise UserError(f"{path}: avatar was enrolled for zoo '{pack.zoo}', not '{zoo.name}'")
    return pack


@main_guard
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Enroll an avatar photo into an avatar pack")
    ap.add_argument("--avatar", required=True, help="portrait photo (JPEG/PNG/WebP)")
    ap.add_argument("--zoo", default="default")
    ap.add_argument("--weights", help="weights folder (vox256)")
    ap.add_argument("--out", type=Path, help="pack path (default: <photo>.avatar)")
    ap.add_argument("--no-tune", action="store_true", help="skip pivotal tuning")
    ap.add_argument("--invert-steps", type=int, help="optimisation steps of the inversion (zoo default)")
    ap.add_argument("--tune-steps", type=int, help="pivotal tuning steps (zoo default)")
    ap.add_argument("--tune-directions", type=int, nargs="?", const=200, default=0, metavar="STEPS",
                    help="also tune A to this avatar (default zoo; 200 steps when no number is given, ~2.5 min)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads of the optimisation (default as every other tool enrolls: 1 for "
                         "the default zoo, all cores for vox256; other counts change the pack numerically)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    zoo = load_zoo(args.zoo, args.weights)
    photo = read_photo(args.avatar)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    enroller = Enroller(zoo, not args.no_progress, log, max(1, args.threads) if args.threads else None)
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
