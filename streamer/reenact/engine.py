"""Per-frame reenactment: driving frame -> face -> pose -> latent -> image (paper Eq. 3).

`Engine` holds one zoo's models, loaded once and shared by every session; `AvatarReenactor` is one
session: an avatar pack (latent, tuned G, the avatar's own pose), its own Net3D tracker and filters.

Motion is relative by default: dp = p_t - p_ref with p_ref the driver's neutral reference (first frame
with a face, then where the driver's head usually is; `reset_reference` re-takes it), applied on top of the avatar's own pose, so the avatar
starts from its own expression and a driver whose neutral face is not the avatar's still drives it
correctly. The target p_avatar + dp is clamped to the range calibration saw. In relative mode the
shift is A dp - A 0 (the bias cancels, so the first frame reproduces the avatar exactly); absolute mode
(`relative=False`) is the paper's formula dp = p_driver - p_avatar with the bias.
Frames with no face hold the last pose for `hold_s`, then ease back to the avatar's neutral pose.

The per-avatar response correction (engines.method.correction) and the head-pose feedback
(streamer.reenact.feedback, `feedback_every` N > 0) are measured on the avatar's own renders; the
correction once per pack in a process (PerPack) and once per pack on a machine (CorrectionCache).
"""
from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from calibration.avatar_directions import check_supported
from engines.core.device import describe, resolve_device
from engines.core.errors import UserError
from engines.core.views import image_uint8
from engines.method.correction import Correction, mouth_is_open
from engines.method.net3d import MediaPipeNet3D
from engines.method.net3d_torch import Reader, TorchNet3D
from engines.method.zoos import load_zoo
from streamer.avatar.enroll import cached_pack_path, load_or_enroll
from streamer.avatar.framing import OUT_SIZE, Framer
from streamer.avatar.pack import AvatarPack
from streamer.avatar.preparing import enroll_in_subprocess
from streamer.reenact.api import Output
from streamer.reenact.config import NET3D_CHOICES, ReenactConfig
from streamer.reenact.correction_cache import CorrectionCache, corrections_dir, tensors_hash
from streamer.reenact.feedback import HeadFeedback
from streamer.reenact.generator_stage import GeneratorStage
from streamer.reenact.motion import Motion
from streamer.reenact.net3d_stage import Net3DStage
from streamer.reenact.output_guard import OutputGuard
from streamer.reenact.side_by_side import side_by_side

PACKS_KEPT = 4   # avatar packs an Engine keeps in memory (a default-zoo pack is ~3 MB)


class PerPack:
    """Measurements that depend only on an avatar pack (and the engine): made by the pack's first session
    and shared by its next ones while the pack object lives. A session then starts in ~0.1 s instead of
    ~12 s (a 2-vCPU VM) of renders read by MediaPipe, CPU that the calls already running would feel."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: dict[tuple, tuple[weakref.ref, object]] = {}

    def get(self, pack: AvatarPack, key: tuple, make: Callable[[], object]):
        k = (id(pack), *key)
        with self._lock:
            hit = self._items.get(k)
            if hit is not None and hit[0]() is pack:   # an id can be reused once its pack is gone
                return hit[1]
        value = make()     # outside the lock: two new packs measure at once
        with self._lock:
            for dead in [d for d, (ref, _) in self._items.items() if ref() is None]:
                del self._items[dead]
            self._items[k] = (weakref.ref(pack), value)
        return value

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for ref, _ in self._items.values() if ref() is not None)


class Engine:
    """One zoo's models (generator, directions), shared read-only by all sessions."""

    def __init__(self, zoo: str = "default", weights: str | Path | None = None,
                 directions: str | Path | None = None, log=print, progress: bool = True,
                 device: str | torch.device | None = "cpu", tune_directions: int = 0, generator_stage=None,
                 net3d: str = "auto"):
        """generator_stage: where sessions render (default: a GeneratorStage in this process; the cluster
        front-end passes streamer.cluster's remote stage, which has the same methods).
        net3d: the default zoo's face reader (NET3D_CHOICES; `auto`: the batched torch port on a GPU)."""
        self.device = resolve_device(device)   # checked before any model loads
        if tune_directions:   # before any model loads
            check_supported(zoo)
        use_torch_net3d = net3d_is_torch(net3d, zoo, self.device)
        self.zoo = load_zoo(zoo, weights, directions)
        self.directions = self.zoo.directions()
        self.log = log
        if self.device.type != "cpu":
            # the per-frame networks (each avatar's generator, vox256's DECA, the torch Net3D) run there;
            # enrollment, MediaPipe's runtime and the small pose maths stay on the CPU
            for m in self.zoo.device_modules:
                m.to(self.device)
            torch.backends.cudnn.benchmark = True   # one frame size for the whole session
            log(f"models run on {describe(self.device)}")
        # every session renders through this one stage (batched on a GPU, one frame at a time on the CPU)
        self.generator_stage = generator_stage if generator_stage is not None else \
            GeneratorStage(self.zoo.generator, self.zoo.recipe.tuning.layers, self.device, log=log,
                           rank=self.zoo.recipe.tuning.rank)
        # every session reads its driver through this stage (batched), or through its own MediaPipe runtime
        self.net3d_stage = Net3DStage(TorchNet3D.from_task().to(self.device), log=log) if use_torch_net3d else None
        self.progress = progress
        self.tune_directions = tune_directions   # photos enrolled from here on also tune A to the avatar
        self._enroll_lock = threading.Lock()  # one enrollment at a time; each is CPU-bound anyway
        self._packs: dict[tuple, AvatarPack] = {}   # the last few packs, by file and its mtime/size
        self.per_pack = PerPack()                   # each pack's response correction, its roll at rest
        self.corrections = CorrectionCache(log=log)   # ... and its correction kept for the next processes

    def pack(self, avatar: str | Path, on_progress=None) -> AvatarPack:
        """avatar's pack (enrolled once and cached; kept in memory for the next sessions).
        on_progress(stage, done, total) reports an enrollment's progress (streamer.avatar.enroll.Enroller)."""
        key = self._key(avatar)
        with self._enroll_lock:
            if key in self._packs:
                return self._packs[key]
            pack = load_or_enroll(avatar, self.zoo, self.progress, self.log, self.tune_directions, on_progress)
            if key is not None:
                self._packs[key] = pack
                while len(self._packs) > PACKS_KEPT:
                    self._packs.pop(next(iter(self._packs)))
            return pack

    def _key(self, avatar) -> tuple | None:
        path = Path(avatar)
        try:
            st = path.stat()
        except OSError:
            return None                 # load_or_enroll says what is wrong with it
        return (str(path.resolve()), st.st_mtime_ns, st.st_size, self.tune_directions)

    def remember(self, avatar: str | Path, pack: AvatarPack) -> None:
        """Use `pack` (enrolled elsewhere, e.g. in another process) as avatar's from now on."""
        pack.check(self.zoo)
        key = self._key(avatar)
        if key is not None:
            with self._enroll_lock:
                self._packs[key] = pack
                while len(self._packs) > PACKS_KEPT:
                    self._packs.pop(next(iter(self._packs)))

    def is_ready(self, avatar: str | Path) -> bool:
        """Whether avatar's pack is at hand (in memory, a pack file, or cached): no enrollment needed."""
        path = Path(avatar)
        if self._key(avatar) in self._packs or path.suffix in (".avatar", ".safetensors"):
            return True
        try:
            return cached_pack_path(path, self.zoo, self.tune_directions).is_file()
        except OSError:
            return False

    @cached_property
    def _generator_hash(self) -> str:
        return tensors_hash(self.zoo.generator.state_dict())

    def correction_parts(self, A, key: tuple) -> tuple:
        """What a session's correction depends on besides its pack and this software (CorrectionCache):
        the zoo, its generator, the session's A and key, where the renders run and what reads them."""
        return (self.zoo.name, self._generator_hash, tensors_hash(A.state_dict()), list(key),
                self.device.type, type(self.generator_stage).__name__, self.net3d_stage is not None)

    def image_reader(self):
        """A Net3D reader of single images (the avatar's own renders): the same Net3D as the drivers'."""
        return Reader(self.net3d_stage.net) if self.net3d_stage is not None else MediaPipeNet3D("image")

    def pose_reader(self):
        """A new session's Net3D reader of driving frames: `.read(rgb, t_ms)` -> reading | None, `.close()`."""
        return self.net3d_stage.reader() if self.net3d_stage is not None else self.zoo.pose_reader()

    def make_reenactor(self, avatar: str | Path | None, **kw) -> "AvatarReenactor":
        if avatar is None:
            raise UserError("no avatar given: pass --avatar PHOTO (or an .avatar pack)")
        return AvatarReenactor(self, self.pack(avatar), corrections=corrections_dir(avatar), **kw)

    def close(self) -> None:
        self.generator_stage.close()
        if self.net3d_stage is not None:
            self.net3d_stage.close()


def net3d_is_torch(choice: str, zoo: str, device: torch.device) -> bool:
    """Whether the engine reads drivers with the batched torch Net3D. It ports MediaPipe, the default zoo's
    Net3D (vox256 reads with DECA); on the CPU MediaPipe's runtime is faster (docs/benchmarks.md)."""
    if choice not in NET3D_CHOICES:
        raise UserError(f"--net3d must be one of {', '.join(NET3D_CHOICES)}, not '{choice}'")
    if choice == "torch" and zoo != "default":
        raise UserError(f"--net3d torch ports MediaPipe, the default zoo's Net3D; zoo '{zoo}' reads with its own")
    return choice == "torch" or (choice == "auto" and zoo == "default" and device.type != "cpu")


def tuned_spread(pack: AvatarPack, tuning, A) -> list[float] | None:
    """The spread of the requests the pack's generator was tuned on (recorded at enrollment; packs from
    before the record took the zoo's recipe of the time), or None: not tuned on pose targets."""
    report = pack.meta.get("tuning") or {}
    if "request_sd" in report:
        return report["request_sd"]
    return tuning.targets.request_sd(A) if "targets" in report and tuning.targets is not None else None


class AvatarReenactor:
    """One session: driving frame -> Net3D (its own reader) -> motion state -> correction and feedback
    -> latent -> the engine's shared generator stage -> guard -> framing. corrections: the folder the
    pack's measured correction is kept in (correction_cache.corrections_dir; None: the user cache's)."""

    def __init__(self, engine: Engine, pack: AvatarPack, *, relative: bool = True, smooth: bool = True,
                 side_by_side: bool = False, out_size: int = OUT_SIZE, hold_s: float = 1.0,
                 ease_s: float = 0.5, correct: bool = True, feedback_every: int = 0,
                 corrections: Path | None = None):
        if pack.zoo != engine.zoo.name:
            raise UserError(f"avatar was enrolled for zoo '{pack.zoo}', engine runs '{engine.zoo.name}'")
        self.engine, self.pack = engine, pack
        self.A = pack.directions_for(engine.directions)   # the zoo's A, or the one tuned to this avatar
        self.stage = engine.generator_stage
        self.slot = self.stage.add_avatar(pack)
        self.session = self.stage.new_session()
        self.G = self.stage.generator(self.slot)            # this avatar alone, for load-time measurements
        self.z = pack.latent.float()
        self.reader = engine.pose_reader()
        self.relative, self.side_by_side, self.out_size = relative, side_by_side, out_size
        self.framer = Framer(pack.display, pack.display_scale, out_size)
        self.motion = Motion(self.A, pack.p, relative=relative, smooth=smooth, hold_s=hold_s, ease_s=ease_s,
                             before_turn=engine.zoo.before_image_turn)
        self.frames = self.no_face = 0
        self.correction = self.feedback = self.guard = None   # all measured on the avatar's own render below
        self._last_request: torch.Tensor | None = None
        k = self.A.k
        with torch.no_grad():
            self.bias = self.A(torch.zeros(1, k))
            self.avatar_img = self._render(self._latent(torch.zeros(k)))
        self.guard = OutputGuard(self._small)
        if engine.zoo.reads_own_output:   # both read the avatar's renders with MediaPipe
            # with head-pose feedback on, the shown angles are measured and steered: the open-loop guards
            # (the reach limit would cap what the feedback asks for) are left off
            spread, reach = tuned_spread(pack, engine.zoo.recipe.tuning, self.A), feedback_every == 0
            key = ("correction", None if spread is None else tuple(spread), reach, out_size, relative)
            self.correction = engine.per_pack.get(pack, key, lambda: self._stored_correction(
                corrections or corrections_dir(None), key, spread, reach)) if correct else None
            # publish (open loop only): the renders read in the frame a viewer is shown too, not only in
            # Net3D's view of the 64-px render (the touchline man's widened wide-mouth jaw 0.60 -> 0.74);
            # the feedback keeps the view's reading, which its yaw loop was measured on (docs/reenactment.md)
            if self.correction is not None:
                if self.correction.mouth_open:
                    self.motion.shut_at(self.correction.shut_reading(self.A, pack.p))
                self.motion.move_rest(self.correction.room_shift())
                self.motion.open_to(self.correction.jaw_top)
            self.feedback = HeadFeedback.start(self.A, self._small, feedback_every, engine.image_reader)
            self.motion.bound_roll(engine.per_pack.get(pack, ("shown roll", out_size, relative),
                                                       lambda: self._shown_roll(engine.image_reader)))
        self._t0 = time.monotonic()

    def _stored_correction(self, folder: Path, key: tuple, spread, reach: bool) -> Correction | None:
        """The correction kept in folder by an earlier process, or measured here and kept there."""
        parts = self.engine.correction_parts(self.A, key)
        return self.engine.corrections.get(folder, self.pack, parts, lambda: self._measure_correction(spread, reach))

    def _measure_correction(self, spread, reach: bool) -> Correction | None:
        return Correction.measure(self.A, self._render_requests, spread=spread, reach=reach,
                                  image_reader=self.engine.image_reader,
                                  mouth_open=mouth_is_open(self.pack.p, self.A.param_names),
                                  publish=self._published if reach else None)

    def _shown_roll(self, image_reader) -> float | None:
        """The roll (degrees) the reader sees on the published avatar at rest (None: no face)."""
        if "roll" not in self.A.param_names:
            return None
        with image_reader() as reader:
            face = reader.read(self.avatar_img)
        return None if face is None else float(face.p[self.A.param_names.index("roll")])

    @property
    def dp(self) -> torch.Tensor:
        return self.motion.dp

    def _render_requests(self, dps: torch.Tensor) -> torch.Tensor:
        return self.G.synthesize(self._latent_batch(dps).to(self.engine.device)).cpu()

    def _published(self, renders: torch.Tensor) -> np.ndarray:
        """Renders [N, 3, R, R] in [-1, 1] -> the frames published of them at roll 0, uint8 [N, S, S, 3]."""
        return np.stack([self.framer(face) for face in image_uint8(renders).numpy()])

    def _latent_batch(self, dps: torch.Tensor) -> torch.Tensor:
        shift = self.A(dps) - (self.bias if self.relative else 0)
        return self.engine.zoo.compose_latent(self.z.expand(len(dps), *self.z.shape[1:]), shift)

    def reset_reference(self) -> None:
        self.motion.reset()

    def _request(self, dp: torch.Tensor, ease: float | None) -> torch.Tensor:
        """The change A is asked for: dp with the feedback and the correction applied. While the pose
        eases back to neutral (no face), the last request shrinks straight toward 0 instead, so the
        avatar returns along one line (the correction's reach limit trades angles for an opening jaw:
        re-applied to a shrinking dp, the angles could grow back while the mouth closes)."""
        if ease is not None and self._last_request is not None:
            self._last_request = self._last_request * ease
            return self._last_request
        if self.feedback is not None:
            dp = dp.clone()
            dp[:3] += self.feedback.integral
        if self.correction is not None:
            dp = self.correction(dp)
        self._last_request = dp
        return dp

    @torch.no_grad()
    def _latent(self, dp: torch.Tensor) -> torch.Tensor:
        """The latent of a final request dp [K] (what _request returns)."""
        shift = self.A(dp[None])
        if self.relative:
            shift = shift - self.bias
        return self.engine.zoo.compose_latent(self.z, shift)

    @torch.no_grad()
    def _render(self, latent: torch.Tensor, roll: float = 0.0) -> np.ndarray:
        self._small = self.stage.render(self.session, latent, self.slot)
        self.held = False
        if self.guard is not None:
            held = self.guard.held
            self._small = self.guard(self._small)
            self.held = self.guard.held > held
            if self.held:   # the last good frame, turned as it was shown
                roll = self._good_roll
        self._good_roll = roll
        return self.framer(image_uint8(self._small)[0].numpy(), roll)

    def process(self, image: np.ndarray, t: float | None = None) -> Output:
        t0 = time.perf_counter()
        # the filters and the tracker run on the frame's own clock: a file processed faster or slower
        # than real time must smooth exactly as when it plays live
        now = time.monotonic() - self._t0 if t is None else t
        face = self.reader.read(image, int(now * 1000))
        t1 = time.perf_counter()
        pose = None if face is None else np.array(face.p, dtype=np.float64)
        self.no_face += face is None
        ease = self.motion.update(pose, now)
        if ease is not None and self.feedback is not None:
            self.feedback.ease(ease)   # neutral is the avatar itself
        t2 = time.perf_counter()
        latent = self._latent(self._request(self.motion.dp, ease))
        t3 = time.perf_counter()
        result = self._render(latent, self.motion.roll)
        out = side_by_side(image, self.pack.display, result) if self.side_by_side else result
        t4 = time.perf_counter()
        stage_ms = {"face": (t1 - t0) * 1e3, "pose": (t2 - t1) * 1e3, "latent": (t3 - t2) * 1e3,
                    "image": (t4 - t3) * 1e3}
        if self.feedback is not None and face is not None:   # no driver: the held pose stays exactly
            self.feedback.update(self.frames, self.motion.dp, self._small)
            stage_ms["feedback"] = (time.perf_counter() - t4) * 1e3
        self.frames += 1
        return Output(out, face is not None, stage_ms, held=self.held, pose=pose)

    def close(self) -> None:
        self.reader.close()
        if self.feedback is not None:
            self.feedback.close()
        self.stage.end_session(self.session)
        self.stage.remove_avatar(self.slot)


class ReenactorFactory:
    """`make_reenactor(avatar)` for every session of one run (the file, the webcam, each WebRTC peer,
    the benchmarks): the Engine is built from the config on first use, once, and shared by all of them
    (peers call this concurrently)."""

    def __init__(self, config: ReenactConfig, default_avatar: str | Path | None = None, log=print):
        self.config, self.default_avatar, self.log = config, default_avatar, log
        self._lock = threading.Lock()
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                torch.set_num_threads(self.config.threads)
                self._engine = self._make_engine()
            return self._engine

    def _make_engine(self, generator_stage=None) -> Engine:
        c = self.config
        return Engine(c.zoo, c.weights, c.directions, log=self.log, progress=c.progress, device=c.device,
                      tune_directions=c.tune_directions, generator_stage=generator_stage, net3d=c.net3d)

    def __call__(self, avatar: str | Path | None = None, **overrides) -> AvatarReenactor:
        return self.engine.make_reenactor(avatar or self.default_avatar, **{**self.config.session(), **overrides})

    def prepare(self, avatar: str | Path, report=None) -> AvatarPack:
        """WebRTC: enroll (or load) an avatar before anyone asks for it; sessions then find it in memory.
        A photo not enrolled yet enrolls in its own low-priority process (streamer.avatar.preparing), so
        running calls keep their frame rate meanwhile. report(stage, done, total): its progress."""
        engine = self.engine
        if engine.is_ready(avatar):
            return engine.pack(avatar, on_progress=report)
        c = self.config
        pack = enroll_in_subprocess(avatar, report, zoo=c.zoo, weights=c.weights, directions=c.directions,
                                    tune_directions=c.tune_directions, log=self.log)
        engine.remember(avatar, pack)
        return pack

    def stage_stats(self) -> dict:
        """The shared generator stage's scheduler statistics (calls, frames, sessions served)."""
        return self.engine.generator_stage.stats.summary()


# for tools that take MODULE:FUNCTION (e.g. `python -m streamer.bench.live --factory
# streamer.reenact.engine:default_zoo_factory --avatar me.png`): run_stream's defaults on the default zoo
default_zoo_factory = ReenactorFactory(ReenactConfig(progress=False))
# the same with head-pose feedback every 3rd frame (`run_stream.py --feedback 3`)
default_zoo_feedback_factory = ReenactorFactory(ReenactConfig(progress=False, feedback_every=3))
