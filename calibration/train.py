"""`python -m calibration.train --zoo default`: learn the direction matrix A (the paper's training loop).

Each step draws random source/target latents from the statistics pool, dp = p_t - p_s (normalised);
in half of the batch only one random direction moves (dp = eps * e_i, eps ~ U[-a, a]: encourages
disentangled directions). The reenacted image G(z_s + A dp) is read by the differentiable Net3D port
on the source's crop, and compared with a reference built from the source's identity and the target's
expression and pose (calibration.shape_model):
  L = L_shape + L_eye + L_mouth + l_exp L_exp + l_id L_id + l_pix L_pix
L_exp (blendshape scores of the reenacted face vs the reference's) is the expression half of the
paper's DECA-parameter consistency, which landmarks alone see only weakly for eyes and brows.
Adam, weight decay 5e-4 (paper); resumable checkpoints; a loss-curve plot and a direction sweep grid.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from calibration.identity import IdentityScorer, points_from_landmarks
from calibration.losses import identity_loss, landmark_losses, lowpass_l1
from calibration.mixed import concat_pools, inverted_pool
from calibration.prepare import TrainData, prepare
from calibration.sampling import Pool
from calibration.shape_model import to_camera
from engines.core.errors import UserError, main_guard
from engines.core.views import VIEW_SIZE, image_uint8, net3d_view
from engines.method.pose import EXPRESSION_INDEX, euler_from_rotation, rotation_from_euler
from engines.method.zoos import ZOOS, load_zoo
from engines.models.directions import Directions
from engines.models.face_geometry import FaceGeometry
from engines.models.facelandmarker import FaceLandmarkerTorch, crop, roi_from_landmarks, uncrop_landmarks

WEIGHTS = {"shape": 1.0, "eye": 1.0, "mouth": 4.0, "pose": 4.0, "exp": 4.0, "id": 0.1, "pix": 0.05}


def rotation_torch(angles_deg: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(rotation_from_euler(angles_deg.detach().double().numpy()), dtype=torch.float32)


@dataclass(frozen=True)
class TrainConfig:
    """The training loop's settings (`python -m calibration.train` builds one from its flags)."""
    lr: float = 3e-3                 # peak learning rate
    batch: int = 16
    seed: int = 0
    steps: int | None = None         # cosine decay of the lr over this many steps (None: constant lr)
    weights: dict = field(default_factory=lambda: dict(WEIGHTS))   # loss weights
    expr_range: float = 1.0          # single-direction expression shifts: eps ~ U[-r a, r a] (angles: U[-a, a])
    single_fraction: float = 0.5     # share of each batch that shifts one direction (the paper: half)
    real_from: int | None = None     # mixed mode: pool rows from here on are inverted real frames


@dataclass(frozen=True)
class TrainRun:
    """`python -m calibration.train`: where the run lives and what it starts from, with its TrainConfig."""
    zoo: str
    weights_dir: str | None
    run: Path
    init: str
    ckpt_every: int
    resume: bool
    threads: int
    mixed: str | None
    mixed_frames: int
    mixed_steps: int
    progress: bool
    train: TrainConfig

    @classmethod
    def from_args(cls, args) -> "TrainRun":
        train = TrainConfig(lr=args.lr, batch=args.batch, seed=args.seed, steps=args.steps,
                            weights={k: vars(args)[f"w_{k}"] for k in WEIGHTS},   # one flag per loss
                            expr_range=args.expr_range, single_fraction=args.single_fraction)
        return cls(args.zoo, args.weights, args.run or Path("runs") / args.zoo, args.init, args.ckpt_every,
                   args.resume, args.threads, args.mixed, args.mixed_frames, args.mixed_steps,
                   not args.no_progress, train)


class Trainer:
    def __init__(self, generator, data: TrainData, directions: Directions, landmarker: FaceLandmarkerTorch,
                 scorer: IdentityScorer, config: TrainConfig):
        self.G, self.data, self.A = generator, data, directions
        self.landmarker, self.scorer = landmarker, scorer
        self.config = config
        self.w = config.weights
        self.batch = config.batch
        self.lr, self.total_steps = config.lr, config.steps
        self.expr_range, self.single_fraction = config.expr_range, config.single_fraction
        self.opt = torch.optim.Adam(self.A.linear.parameters(), lr=config.lr, weight_decay=5e-4)
        self.geometry = FaceGeometry()
        # jawOpen (talking) counts as much as the other nine expressions together
        self.exp_w = torch.ones(len(EXPRESSION_INDEX))
        self.exp_w[0] = float(len(EXPRESSION_INDEX) - 1)
        self.exp_w = self.exp_w * (len(self.exp_w) / self.exp_w.sum())
        self.rng = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.real_from = config.real_from
        self.history: list[dict] = []

    # -- batches -------------------------------------------------------------------------------
    def sample(self):
        n, k, a = len(self.data.z), self.A.k, self.A.shift_scale
        s = torch.randint(0, n, (self.batch,), generator=self.rng)
        if self.real_from is not None:  # mixed mode (paper): every other source is an inverted real frame
            s[::2] = torch.randint(self.real_from, n, (len(s[::2]),), generator=self.rng)
        t = torch.randint(0, n, (self.batch,), generator=self.rng)
        p_s, p_t = self.data.p[s], self.data.p[t]
        dp = self.A.normalise(p_t) - self.A.normalise(p_s)
        half = self.batch - round(self.batch * self.single_fraction)  # rows from here shift one direction
        one = torch.randint(0, k, (self.batch - half,), generator=self.rng)
        eps = (torch.rand(self.batch - half, generator=self.rng) * 2 - 1) * a
        # expressions: a driver's dp spans the whole normalised range (a full blink from open eyes is
        # 2a), and a direction must not turn the head anywhere in it; angles stay within +-a
        eps = eps * torch.where(one >= 3, self.expr_range, 1.0)
        dp[half:] = 0
        dp[half:, :][torch.arange(self.batch - half), one] = eps
        p_ref = self.A.denormalise(self.A.normalise(p_s) + dp)
        return s, dp, p_ref

    def reference(self, s, p_ref):
        """Reference landmarks (camera frame) for sources s posed/expressed as p_ref."""
        d, m = self.data, self.data.shape_model
        p_s = d.p[s]
        e_ref = p_ref[:, 3:].clamp(0, 1)
        d_expr = e_ref - p_s[:, 3:].clamp(0, 1)
        canon = d.canonical[s] + torch.einsum("nde,be->bnd", m.basis, d_expr)
        dR = rotation_torch(p_ref[:, :3]) @ rotation_torch(p_s[:, :3]).transpose(1, 2)
        R = dR @ d.rotation[s]
        lm = d.scale[s].view(-1, 1, 1) * canon @ R.transpose(1, 2)
        expr_target = (d.expr_port[s] + d_expr).clamp(0, 1)
        # target angles as the port + MediaPipe geometry would read them (its reading of the source
        # plus the requested change), so the runtime's small offsets on the source cancel
        angles_target = d.angles[s] + (p_ref[:, :3] - p_s[:, :3])
        return lm, expr_target, angles_target

    # -- one step --------------------------------------------------------------------------------
    def losses(self, s, dp, p_ref):
        d = self.data
        z_s = d.z[s]
        img_s = self.G.synthesize(z_s)
        img_r = self.G.synthesize(self.G.apply_shift(z_s, self.A(dp)))
        view_r = net3d_view(img_r)
        with torch.no_grad():  # track the face like the runtime does: re-crop on where it now is
            first = self.landmarker.landmark_net(crop(view_r, d.roi[s]))[0]
            roi = roi_from_landmarks(uncrop_landmarks(first, d.roi[s])[..., :2], VIEW_SIZE, VIEW_SIZE)
        out = self.landmarker(view_r, roi)
        lm_r = to_camera(out["landmarks"])
        lm_ref, expr_ref, angles_ref = self.reference(s, p_ref)
        shape, eye, mouth = landmark_losses(lm_r, lm_ref, d.scale[s], d.shape_model.rigid)
        # parameter consistency, in the units evaluation reports (not normalised p: roll's narrow
        # range would make 1 degree of roll cost as much as 6 of yaw and forbid turning the head):
        # head angles of the reenacted landmarks by MediaPipe's own geometry pipeline (the pose the
        # runtime reports) vs the target's, 10 degrees = 1; expression scores, 0.5 = 1.
        angles_r = euler_from_rotation(self.geometry(out["landmarks"], VIEW_SIZE, VIEW_SIZE))
        pose = (angles_r - angles_ref).abs().mean() / 10.0
        exp = ((out["blendshapes"][:, EXPRESSION_INDEX] - expr_ref).abs() * self.exp_w).mean() * 2.0
        emb_r = self.scorer.embed_points(view_r, points_from_landmarks(out["landmarks"].detach()))
        ident = identity_loss(emb_r, d.emb[s])
        pix = lowpass_l1(img_r, img_s.detach())
        parts = {"shape": shape, "eye": eye, "mouth": mouth, "pose": pose, "exp": exp, "id": ident, "pix": pix}
        total = sum(self.w[k] * v for k, v in parts.items())
        return total, parts

    def train_step(self) -> dict:
        if self.total_steps:  # cosine decay: large early steps, little random walk at the end
            for g in self.opt.param_groups:
                g["lr"] = 0.5 * self.lr * (1 + math.cos(math.pi * min(self.step / self.total_steps, 1.0)))
        s, dp, p_ref = self.sample()
        total, parts = self.losses(s, dp, p_ref)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        self.step += 1
        rec = {"step": self.step, "total": total.item(), **{k: v.item() for k, v in parts.items()}}
        self.history.append(rec)
        return rec

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict:
        return {"step": self.step, "A": self.A.state_dict(), "opt": self.opt.state_dict(),
                "rng": self.rng.get_state(), "history": json.dumps(self.history)}

    def load_state(self, st: dict) -> None:
        self.step = int(st["step"])
        self.A.load_state_dict(st["A"])
        self.opt.load_state_dict(st["opt"])
        self.rng.set_state(st["rng"])
        self.history = json.loads(st["history"])


def plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [k for k in history[0] if k != "step"]
    steps = np.array([h["step"] for h in history])
    fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys), 2.4))
    win = max(1, len(history) // 50)
    for ax, k in zip(axes, keys):
        v = np.array([h[k] for h in history])
        ax.plot(steps, v, color="#bbbbbb", lw=0.6)
        if len(v) >= win:
            ax.plot(steps[win - 1:], np.convolve(v, np.ones(win) / win, "valid"), color="#225588")
        ax.set_title(k, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@torch.no_grad()
def sweep_grid(generator, directions: Directions, z: torch.Tensor, path: Path, steps: int = 7) -> None:
    """Rows: directions; columns: eps from -a to +a on one direction (source in the middle column)."""
    from PIL import Image
    a = directions.shift_scale
    eps = torch.linspace(-a, a, steps)
    rows = []
    for i in range(directions.k):
        dp = torch.zeros(steps, directions.k)
        dp[:, i] = eps
        img = generator.synthesize(generator.apply_shift(z.expand(steps, *z.shape[1:]), directions(dp)))
        rows.append(torch.cat(list(img), dim=2))
    grid = image_uint8(torch.cat(rows, dim=1)[None])[0].numpy()
    Image.fromarray(grid).save(path)


def init_directions(zoo, stats: dict, init: str, ls_path: Path | None) -> Directions:
    lo = [stats["params"][n]["lo"] for n in zoo.param_names]
    hi = [stats["params"][n]["hi"] for n in zoo.param_names]
    shape = getattr(zoo.generator, "shift_shape", zoo.generator.latent_shape)
    meta = {"method": "learned", "crop_recipe": stats.get("crop_recipe"),
            "stats": {k: stats[k] for k in ("n", "detection_rate", "seed") if k in stats}}
    d = Directions(len(zoo.param_names), shape, 6.0, zoo.param_names, zoo.name, lo, hi, meta=meta)
    if init == "least_squares":
        ls = Directions.from_checkpoint(ls_path, expect_zoo=zoo.name, expect_params=zoo.param_names)
        d.linear.load_state_dict(ls.linear.state_dict())
    return d


@main_guard
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m calibration.train",
                                 description="Train the direction matrix A (the paper's loop; docs/calibration.md)")
    ap.add_argument("--zoo", default="default", choices=ZOOS,
                    help="model set: default (64 px DCGAN) or vox256 (the paper's, --weights DIR) (default: default)")
    ap.add_argument("--weights", metavar="DIR", help="vox256 weights folder (default: none)")
    ap.add_argument("--run", type=Path, help="folder with stats.json/pool.npz; outputs go here (default runs/<zoo>)")
    ap.add_argument("--steps", type=int, default=500, help="optimisation steps (default 500)")
    ap.add_argument("--batch", type=int, default=16, help="source/target pairs per step (default 16)")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate, cosine decay to 0 (default 3e-3)")
    ap.add_argument("--init", choices=["random", "least_squares"], default="random",
                    help="starting A: random, or the least-squares baseline that calibration.stats wrote "
                         "(default random)")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the batches and the start (default 0)")
    ap.add_argument("--ckpt-every", type=int, default=50,
                    help="write <run>/train_ckpt.pt every N steps, for --resume (default 50)")
    ap.add_argument("--resume", action="store_true", help="continue from <run>/train_ckpt.pt (default: start afresh)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default 0: all cores)")
    for k, v in WEIGHTS.items():
        ap.add_argument(f"--w-{k}", type=float, default=v, help=f"weight of the {k} loss term (default {v})")
    ap.add_argument("--mixed", help="clip or image folder: add inverted real frames, half of each batch "
                                     "(the paper's mixed mode; calibration.mixed) (default: none)")
    ap.add_argument("--mixed-frames", type=int, default=32, help="real frames to invert (default 32)")
    ap.add_argument("--mixed-steps", type=int, default=40, help="inversion steps per frame (default 40)")
    ap.add_argument("--expr-range", type=float, default=1.0,
                    help="single-direction expression shifts span +-R*a (default 1; a driver reaches 2)")
    ap.add_argument("--single-fraction", type=float, default=0.5,
                    help="share of each batch that shifts a single direction (default 0.5, the paper's)")
    ap.add_argument("--quiet", dest="no_progress", action="store_true", help="no progress bars (default: show them)")
    ap.add_argument("--no-progress", action="store_true", help=argparse.SUPPRESS)   # older name
    cfg = TrainRun.from_args(ap.parse_args(argv))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = cfg.run
    for f in ("stats.json", "pool.npz", "least_squares.safetensors"):
        if not (run / f).is_file():
            raise UserError(f"{run/f} missing; run first: python -m calibration.stats --zoo {cfg.zoo} --out {run}")
    stats = json.loads((run / "stats.json").read_text())
    zoo = load_zoo(cfg.zoo, cfg.weights_dir)
    landmarker = FaceLandmarkerTorch.from_task().requires_grad_(False)
    scorer = IdentityScorer(zoo.param_names)
    pool, n_real = Pool.load(run / "pool.npz"), 0
    if cfg.mixed:
        real = inverted_pool(zoo, cfg.mixed, run, cfg.mixed_frames, cfg.mixed_steps, cfg.progress)
        pool, n_real = concat_pools(pool, real), len(real.p)
    cache = run / ("train_cache_mixed.pt" if cfg.mixed else "train_cache.pt")
    t0 = time.time()
    if cache.is_file():
        data = TrainData.load(cache)
    else:
        data = prepare(zoo.generator, pool, landmarker, scorer,
                       progress=cfg.progress)
        data.save(cache)
    tc = cfg.train
    if n_real:   # prepare() keeps the pool's order: real rows last
        tc = dataclasses.replace(tc, real_from=len(data.z) - n_real)
    A = init_directions(zoo, stats, cfg.init, run / "least_squares.safetensors")
    trainer = Trainer(zoo.generator, data, A, landmarker, scorer, tc)
    ckpt = run / "train_ckpt.pt"
    if cfg.resume and ckpt.is_file():
        trainer.load_state(torch.load(ckpt, map_location="cpu", weights_only=True))
        print(f"resumed at step {trainer.step}")
    bar = tqdm(total=tc.steps, initial=trainer.step, desc="train", disable=not cfg.progress)
    while trainer.step < tc.steps:
        rec = trainer.train_step()
        bar.update(1)
        bar.set_postfix(loss=f"{rec['total']:.4f}", shape=f"{rec['shape']:.4f}", id=f"{rec['id']:.3f}")
        if trainer.step % cfg.ckpt_every == 0 or trainer.step == tc.steps:
            torch.save(trainer.state(), ckpt)
    bar.close()
    A.save(run / "directions.safetensors", {"steps": trainer.step, "batch": tc.batch, "lr": tc.lr,
                                            "init": cfg.init, "loss_weights": tc.weights,
                                            "expr_range": tc.expr_range,
                                            "single_fraction": tc.single_fraction})
    # the face model of the reference shapes, for tuning A to one avatar later (calibration.avatar_directions)
    data.shape_model.save(run / "shape_model.npz")
    (run / "train_history.json").write_text(json.dumps(trainer.history))
    plot_losses(trainer.history, run / "loss_curve.png")
    sweep_grid(zoo.generator, A, data.z[:1], run / "direction_sweep.png")
    print(f"trained {trainer.step} steps in {time.time() - t0:.0f} s; wrote {run/'directions.safetensors'}, "
          f"{run/'loss_curve.png'}, {run/'direction_sweep.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
