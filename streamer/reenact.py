"""Per-frame reenactment: driving frame -> face -> pose -> latent -> image (paper Eq. 3).

`Engine` holds one zoo's models, loaded once and shared by every session; `AvatarReenactor` is one
session: an avatar pack (latent, tuned G, the avatar's own pose), its own Net3D tracker and filters.

Motion is relative by default: dp = p_t - p_ref with p_ref the driver's neutral reference (first frame
with a face; `reset_reference` re-takes it), applied on top of the avatar's own pose, so the avatar
starts from its own expression and a driver whose neutral face is not the avatar's still drives it
correctly. The target p_avatar + dp is clamped to the range calibration saw. In relative mode the
shift is A dp - A 0 (the bias cancels, so the first frame reproduces the avatar exactly); absolute mode
(`relative=False`) is the paper's formula dp = p_driver - p_avatar with the bias.
Frames with no face hold the last pose for `hold_s`, then ease back to the avatar's neutral pose.

Head-pose feedback (beyond the paper; `feedback_every` N > 0, off by default): every Nth frame Net3D reads the
avatar's own output, and the difference between the head angles asked for and the ones shown is
integrated into the request, so a face that turns less (or more) than A predicts still ends where the
driver is. It only scales the three angle directions A already has, so it cannot invent pixels. It
pauses while the driver shows no face (the held pose stays exactly) and eases out with the pose.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engines.errors import UserError
from engines.zoo import load_zoo

from .api import Output
from .avatar import AvatarPack
from .framing import Framer
from .output_guard import OutputGuard
from .smoothing import OneEuro

OUT_SIZE = 256
GATE_MIN = 0.5  # normalised units an expression direction must move its own parameter to stay on
# ... and at least this much in the parameter's own units (blendshape scores jitter ~0.02 frame to
# frame): a parameter with a narrow calibrated range (mouthFunnel: 0..0.1) passes 0.5 normalised units
# on noise, and its large normalised requests then push the latent where the avatar was never tuned
GATE_RAW = 0.04
FEEDBACK_GAIN = 0.7   # share of the angle error integrated per reading (every 3rd frame: ~0.25/frame)
FEEDBACK_LIMIT = 3.0  # the integral stays within +-3 normalised units (a quarter of each angle's range)
# steps (normalised units) at which the per-avatar correction reads each curved parameter's response:
# the angles either way; jawOpen mostly opening (a closed mouth cannot close much further)
SWEEPS = {"yaw": range(-5, 6), "pitch": range(-5, 6), "roll": range(-5, 6), "jawOpen": range(-4, 11)}


class Engine:
    """One zoo's models (generator, directions), shared read-only by all sessions."""

    def __init__(self, zoo: str = "default", weights: str | Path | None = None,
                 directions: str | Path | None = None, log=print, progress: bool = True,
                 device: str | torch.device | None = "cpu", tune_directions: int = 0):
        from engines.device import describe, resolve_device
        self.device = resolve_device(device)   # checked before any model loads
        if tune_directions:   # before any model loads
            from calibration.avatar_directions import check_supported
            check_supported(zoo)
        self.zoo = load_zoo(zoo, weights, directions)
        self.directions = self.zoo.directions()
        self.log = log
        if self.device.type != "cpu":
            # the per-frame networks (each avatar's generator, vox256's DECA) run there; enrollment,
            # MediaPipe and the small pose maths stay on the CPU
            for m in self.zoo.extra.get("device_modules", ()):
                m.to(self.device)
            torch.backends.cudnn.benchmark = True   # one frame size for the whole session
            log(f"models run on {describe(self.device)}")
        self.progress = progress
        self.tune_directions = tune_directions   # photos enrolled from here on also tune A to the avatar
        self._enroll_lock = threading.Lock()  # one enrollment at a time; each is CPU-bound anyway

    def pack(self, avatar: str | Path) -> AvatarPack:
        from .enroll import load_or_enroll
        with self._enroll_lock:
            return load_or_enroll(avatar, self.zoo, self.progress, self.log, self.tune_directions)

    def make_reenactor(self, avatar: str | Path | None, **kw) -> "AvatarReenactor":
        if avatar is None:
            raise UserError("no avatar given: pass --avatar PHOTO (or an .avatar pack)")
        return AvatarReenactor(self, self.pack(avatar), **kw)


class AvatarReenactor:
    def __init__(self, engine: Engine, pack: AvatarPack, *, relative: bool = True, smooth: bool = True,
                 side_by_side: bool = False, out_size: int = OUT_SIZE, hold_s: float = 1.0,
                 ease_s: float = 0.5, correct: bool = True, feedback_every: int = 0):
        if pack.zoo != engine.zoo.name:
            raise UserError(f"avatar was enrolled for zoo '{pack.zoo}', engine runs '{engine.zoo.name}'")
        self.engine, self.pack = engine, pack
        self.A = pack.directions_for(engine.directions)   # the zoo's A, or the one tuned to this avatar
        self.device = engine.device
        self.G = pack.generator(engine.zoo.generator).for_streaming().to(self.device)
        self.z = pack.latent.float()
        self.reader = engine.zoo.pose_reader()
        self.relative, self.side_by_side, self.out_size = relative, side_by_side, out_size
        self.framer = Framer(pack.display, pack.display_scale, out_size)
        self.hold_s, self.ease_s = hold_s, ease_s
        k = self.A.k
        self.p_avatar = torch.as_tensor(pack.p, dtype=torch.float32)
        span = self.A.hi - self.A.lo
        self.p_min, self.p_max = self.A.lo - 0.1 * span, self.A.hi + 0.1 * span
        # angles jitter by ~0.5 deg and blendshapes by ~0.02 frame to frame: One-Euro per parameter.
        # beta is per unit of speed: angles move tens of degrees/s, blendshapes a few units/s, so theirs
        # is larger, or speech (jawOpen) lags and its correlation with the driver drops (0.58 -> 0.66);
        # the jaw, fastest of all, also gets a higher cutoff (selfie jawOpen r 0.958 -> 0.974)
        self.filter = OneEuro(min_cutoff=np.r_[[1.2] * 3, [4.0], [2.0] * (k - 4)],
                              beta=np.r_[[0.3] * 3, [5.0] * (k - 3)]) if smooth else None
        self.p_ref: torch.Tensor | None = None
        self.dp = torch.zeros(k)
        self.last_face_t: float | None = None
        self.frames = self.no_face = 0
        self.correction = self.feedback = self.guard = None   # all measured on the avatar's own render below
        with torch.no_grad():
            self.bias = self.A(torch.zeros(1, k))
            self.avatar_img = self._render(self._latent(torch.zeros(k)))
        self.guard = OutputGuard(self._small)
        self.correction = self._local_correction() if correct else None
        self.feedback = self._start_feedback(feedback_every)
        self._t0 = time.monotonic()

    @torch.no_grad()
    def _local_correction(self, step: float = 2.0, probe: float = 4.0):
        """Per-avatar direction calibration (beyond the paper). A is one linear map for all faces, but
        how far a direction moves *this* avatar varies by face, is often asymmetric (one avatar turns
        right easily and left hardly), and directions can move the head instead of doing their job (on
        some avatars a blink direction turns the head, and a smile direction cannot widen a smile that
        is already full). Measured once on the avatar's tuned generator, read by Net3D on calibration's
        view:
          * for yaw, pitch, roll and jawOpen, the response curve p_i(t) along direction i (SWEEPS), used
            inverted: the requested change is mapped to the t that produces it (a mouth shows little
            below some opening and then opens fast: without its curve small speech movements vanish);
          * for each other expression direction and each sense (+/-): whether a step of `probe` moves
            its own parameter that way by at least GATE_MIN (normalised units) and GATE_RAW (its own
            units); a sense that does not is switched off for this avatar, since all it can add is
            cross-talk;
          * the head-pose drift of each expression direction, one-sided differences at +/-`step`,
            cancelled by asking the pose directions for the opposite change.
        Returns (curves {i: (t, response)}, drift [2, 3, K-3] for the - and + senses, gates [2, K-3]
        bool) or None when the zoo's Net3D does not read generated faces this way (vox256 with DECA) or
        a render has no face."""
        if not self._reads_own_output:
            return None
        from engines.net3d import MediaPipeNet3D
        from engines.views import net3d_view, to_uint8
        k = self.A.k
        m = k - 3
        swept = {self.A.param_names.index(n): np.asarray(ts, np.float64) for n, ts in SWEEPS.items()}
        sweeps = []
        for i, ts in swept.items():
            rows = torch.zeros(len(ts), k)
            rows[:, i] = torch.as_tensor(ts, dtype=torch.float32)
            sweeps.append(rows)
        e = torch.eye(k)[3:]
        dps = torch.cat([torch.zeros(1, k), *sweeps, e * step, -e * step, e * probe, -e * probe])
        imgs = self.G.synthesize(self._latent_batch(dps).to(self.device)).cpu()
        with MediaPipeNet3D("image") as reader:
            faces = [reader.read(a) for a in to_uint8(net3d_view(imgs))]
        if any(f is None for f in faces):
            return None
        p = self.A.normalise(torch.as_tensor(np.stack([f.p for f in faces]), dtype=torch.float32)).numpy()
        p0, at = p[0], 1
        curves = {}
        for i, t in swept.items():
            r = p[at:at + len(t), i] - p0[i]
            at += len(t)
            if r[-1] - r[0] < 0.5:       # this direction hardly moves this avatar: leave it linear
                continue
            # monotone, with a minimum slope (the inverse's gain at most 20) and anchored at 0 again, so
            # it inverts by interpolation without jumps: on a plateau through t = 0 a tiny requested
            # change would map to the plateau's end, and the avatar would never return to neutral
            r = np.maximum.accumulate(r)
            r = np.concatenate([[0.0], np.cumsum(np.maximum(np.diff(r), 0.05 * np.diff(t)))])
            curves[i] = (t, r - np.interp(0.0, t, r))
        plus, minus = p[at:at + m] - p0, p[at + m:at + 2 * m] - p0
        far_plus, far_minus = p[at + 2 * m:at + 3 * m] - p0, p[at + 3 * m:] - p0
        own = np.arange(m), np.arange(3, k)
        span = (self.A.hi - self.A.lo).numpy()[3:]
        gate = np.maximum(GATE_MIN, GATE_RAW / span * 2 * self.A.shift_scale)
        gates = np.stack([far_minus[own] <= -gate, far_plus[own] >= gate])
        for i in curves:
            if i >= 3:   # an expression with a curve: the curve decides how it moves
                gates[:, i - 3] = True
        # drift in response units (normalised p per unit step): `_corrected` adds it to the requested
        # angle change before the curve inversion turns responses into steps
        drift = np.stack([minus[:, :3].T / step, -plus[:, :3].T / step])   # [-sense, +sense]
        return curves, torch.as_tensor(drift, dtype=torch.float32), torch.as_tensor(gates)

    @property
    def _reads_own_output(self) -> bool:
        """Whether the zoo's Net3D is MediaPipe, which reads generated faces on calibration's view (not
        vox256 with DECA): the per-avatar correction and the feedback both need it."""
        return "pose_reader" not in self.engine.zoo.extra

    def _start_feedback(self, every: int):
        """(reader, the avatar's own angles as read at dp = 0, every) or None: off, or the zoo's Net3D
        does not read generated faces this way (vox256 with DECA), or it finds no face in the avatar."""
        if every <= 0 or not self._reads_own_output:
            return None
        from engines.net3d import MediaPipeNet3D
        reader = MediaPipeNet3D("image")   # each output frame on its own: no tracking lag
        p0 = self._read_output(reader, self._small)
        if p0 is None:
            reader.close()
            return None
        self.fb_integral = torch.zeros(3)
        return reader, p0, int(every)

    def _read_output(self, reader, small: torch.Tensor) -> torch.Tensor | None:
        """Normalised head angles of a generator output [1,3,R,R], read on calibration's view."""
        from engines.views import net3d_view, to_uint8
        face = reader.read(to_uint8(net3d_view(small))[0])
        if face is None:
            return None
        return self.A.normalise(torch.as_tensor(face.p, dtype=torch.float32))[:3]

    def _feed_back(self) -> None:
        """Integrate the angle error of the frame just rendered (dp asked vs the change shown)."""
        reader, p0, every = self.feedback
        if self.frames % every:
            return
        shown = self._read_output(reader, self._small)
        if shown is None:   # output not readable this frame: keep the integral as it is
            return
        err = self.dp[:3] - (shown - p0)
        self.fb_integral = (self.fb_integral + FEEDBACK_GAIN * err).clamp(-FEEDBACK_LIMIT, FEEDBACK_LIMIT)

    def _corrected(self, dp: torch.Tensor) -> torch.Tensor:
        curves, drift, gates = self.correction
        out = dp.clone()
        ex = out[3:]
        ex[~(gates[1] | (ex <= 0))] = 0.0           # senses that do not move this avatar: off
        ex[~(gates[0] | (ex >= 0))] = 0.0
        out[:3] = out[:3] + drift[0] @ ex.clamp(max=0) + drift[1] @ ex.clamp(min=0)
        for i, (t, r) in curves.items():
            if float(out[i]) != 0.0:  # no change requested stays no change
                out[i] = float(np.interp(float(out[i]), r, t))  # clamps to the measured range
        return out

    def _latent_batch(self, dps: torch.Tensor) -> torch.Tensor:
        shift = self.A(dps) - (self.bias if self.relative else 0)
        return self.engine.zoo.compose_latent(self.z.expand(len(dps), *self.z.shape[1:]), shift)

    # -- controls ------------------------------------------------------------------------------
    def reset_reference(self) -> None:
        self.p_ref = None
        if self.filter is not None:
            self.filter.reset()

    # -- stages ----------------------------------------------------------------------------------
    def _pose(self, face, now: float) -> None:
        """Update self.dp (normalised) from a Net3D reading (or None)."""
        if face is None:
            self.no_face += 1
            if self.last_face_t is not None and now - self.last_face_t > self.hold_s:
                ease = float(np.exp(-(1 / 30) / self.ease_s))  # ease toward neutral
                self.dp = self.dp * ease
                if self.feedback is not None:
                    self.fb_integral = self.fb_integral * ease   # neutral is the avatar itself
            return
        self.last_face_t = now
        p = np.asarray(face.p, dtype=np.float64)
        if self.filter is not None:
            p = self.filter(p, now)
        p = torch.as_tensor(p, dtype=torch.float32)
        if self.relative:
            if self.p_ref is None:
                self.p_ref = p.clone()
            target = self.p_avatar + (p - self.p_ref)
        else:
            target = p
        target = torch.maximum(torch.minimum(target, self.p_max), self.p_min)
        self.dp = self.A.normalise(target) - self.A.normalise(self.p_avatar)

    @torch.no_grad()
    def _latent(self, dp: torch.Tensor) -> torch.Tensor:
        if self.feedback is not None:
            dp = dp.clone()
            dp[:3] += self.fb_integral
        if self.correction is not None:
            dp = self._corrected(dp)
        shift = self.A(dp[None])
        if self.relative:
            shift = shift - self.bias
        return self.engine.zoo.compose_latent(self.z, shift)

    @torch.no_grad()
    def _render(self, latent: torch.Tensor) -> np.ndarray:
        self._small = self.G.synthesize(latent.to(self.device)).cpu()
        if self.guard is not None:
            self._small = self.guard(self._small)
        return self.framer(((self._small[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())

    def _compose(self, driver: np.ndarray, result: np.ndarray) -> np.ndarray:
        if not self.side_by_side:
            return result
        h = self.out_size
        w = max(1, round(driver.shape[1] * h / driver.shape[0]))
        drv = np.asarray(Image.fromarray(driver).resize((w, h), Image.BILINEAR))
        avatar = np.asarray(Image.fromarray(self.pack.display).resize((h, h), Image.BICUBIC))
        return np.concatenate([drv, avatar, result], axis=1)

    def process(self, image: np.ndarray, t: float | None = None) -> Output:
        t0 = time.perf_counter()
        # the filters and the tracker run on the frame's own clock: a file processed faster or slower
        # than real time must smooth exactly as when it plays live
        now = time.monotonic() - self._t0 if t is None else t
        face = self.reader.read(image, int(now * 1000))
        t1 = time.perf_counter()
        self._pose(face, now)
        t2 = time.perf_counter()
        latent = self._latent(self.dp)
        t3 = time.perf_counter()
        held = self.guard.held
        result = self._render(latent)
        out = self._compose(image, result)
        t4 = time.perf_counter()
        stage_ms = {"face": (t1 - t0) * 1e3, "pose": (t2 - t1) * 1e3, "latent": (t3 - t2) * 1e3,
                    "image": (t4 - t3) * 1e3}
        if self.feedback is not None and face is not None:   # no driver: the held pose stays exactly
            self._feed_back()
            stage_ms["feedback"] = (time.perf_counter() - t4) * 1e3
        self.frames += 1
        pose = None if face is None else np.array(face.p, dtype=np.float64)
        return Output(out, face is not None, stage_ms, held=self.guard.held > held, pose=pose)

    def close(self) -> None:
        self.reader.close()
        if self.feedback is not None:
            self.feedback[0].close()


_SHARED: dict = {}
_SHARED_LOCK = threading.Lock()


def default_zoo_factory(avatar, **kw):
    """`make_reenactor` for tools that take MODULE:FUNCTION (e.g. `python -m streamer.bench_live
    --factory streamer.reenact:default_zoo_factory --avatar me.png`): one shared default-zoo Engine."""
    with _SHARED_LOCK:
        if "engine" not in _SHARED:
            torch.set_num_threads(1)
            _SHARED["engine"] = Engine("default", progress=False)
    return _SHARED["engine"].make_reenactor(avatar, **kw)


def default_zoo_feedback_factory(avatar):
    """The same with head-pose feedback every 3rd frame (`run_stream.py --feedback 3`)."""
    return default_zoo_factory(avatar, feedback_every=3)
