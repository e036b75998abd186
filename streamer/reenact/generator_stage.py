"""The generator stage: each session's latent -> its avatar's image, one stage shared by every session.

Sessions submit (latent, avatar slot) to one micro-batching scheduler (streamer.reenact.scheduler);
its worker runs the requests it has gathered in one call:
  * batched (a GPU): the zoo's generator in its batched form (engines.accel.avatar_batch), each sample
    gathering its own avatar's pivotal-tuned layers from the avatar bank by slot;
  * batch 1 (the CPU): each request on its avatar's own tuned copy of G, in its fastest verified CPU
    form (the DCGAN through ONNX Runtime, engines.accel.onnx_cpu; else stored channels-last where the
    generator prefers it). On the CPU one frame at a time is fastest, and it renders what an eager
    per-session generator renders (to 1e-4 relative error, checked for each avatar).
Either way the scheduler's statistics count the calls every session shared. The scheduler's worker
thread runs while the stage has avatars (StageWorker): an engine with no session holds no thread.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import threading

import torch

from engines.accel.avatar_batch import AvatarBank, DCGANBatch, StyleGAN2Batch
from engines.accel.buckets import Buckets
from engines.accel.lowrank import DCGANLowRank, LowRankBank, StyleGAN2LowRank
from engines.accel.onnx_cpu import cpu_generator
from engines.core.errors import UserError
from streamer.reenact.scheduler import StageWorker

BUDGET_MS = 15.0     # how long a request may wait for companions (half a 30 fps frame)


class GeneratorStage:
    def __init__(self, generator, tuned_layers: tuple[str, ...], device: torch.device,
                 max_batch: int | None = None, slots: int = 64, log=print, rank: int = 0):
        """rank > 0 (the zoo's recipe tunes rank-r deltas, Tuning.rank): batched, each tuned conv runs once
        with the shared weight plus every sample's own low-rank term (engines.accel.lowrank), not as a
        grouped conv with per-sample weights."""
        self.base, self.device = generator, device
        self.max_batch = max_batch or (1 if device.type == "cpu" else 8)
        self.batched = self.max_batch > 1
        self._lock = threading.Lock()
        self._copies: dict[int, torch.nn.Module] = {}      # batch 1: slot -> the avatar's own G
        self._free = list(range(slots - 1, 0, -1))       # the bank's slots; 0 is the untuned base
        self._ids = itertools.count()
        self._copy_slots = itertools.count(1)            # batch 1: as many avatars as memory holds
        self.rank, self.log = rank, log
        if self.batched:
            style = hasattr(generator, "n_latent")
            if rank:
                self.bank = LowRankBank(generator, tuned_layers, rank, slots).to(device)
                batch_cls = StyleGAN2LowRank if style else DCGANLowRank
            else:
                self.bank = AvatarBank(generator, tuned_layers, slots).to(device)
                batch_cls = StyleGAN2Batch if style else DCGANBatch
            # one compiled engine per batch size; the bank's weights change in place as avatars come and
            # go, which a CUDA graph reads at replay but TensorRT would bake in: no tensorrt here
            self.run_batched = Buckets(batch_cls(generator.to(device), self.bank), device, "generator",
                                       prefer=None if device.type == "cpu" else ("cuda-graph", "eager"), log=log)
        self.worker = StageWorker(self._run, max_batch=self.max_batch, budget_ms=BUDGET_MS, name="generator-stage")
        self.stats = self.worker.stats

    # -- avatars ----------------------------------------------------------------------------------
    def add_avatar(self, pack) -> int:
        """Load an avatar's tuned layers; -> its slot."""
        self.worker.join()
        if not self.batched:
            slot = next(self._copy_slots)
            g = pack.generator(self.base).for_streaming().to(self.device)
            self._copies[slot] = cpu_generator(g, log=self.log) if self.device.type == "cpu" else g
            return slot
        if self.rank:
            check_rank(pack, self.rank)
        with self._lock:
            if not self._free:
                raise RuntimeError("generator stage: every avatar slot of the bank is in use")
            slot = self._free.pop()
        self.bank.set(slot, pack.tuned)
        return slot

    def remove_avatar(self, slot: int) -> None:
        if self.batched:
            self.bank.reset(slot)
        else:
            self._copies.pop(slot, None)
        if self.batched:
            with self._lock:
                self._free.append(slot)
        self.worker.leave()

    def generator(self, slot: int):
        """The module that renders this slot alone (batch 1), for measurements at load time."""
        return self._copies[slot] if not self.batched else _SlotView(self.run_batched, slot)

    def new_session(self) -> int:
        return next(self._ids)

    # -- frames -----------------------------------------------------------------------------------
    def render(self, session: int, latent: torch.Tensor, slot: int) -> torch.Tensor:
        """latent [1, *latent_shape] -> image [1, 3, R, R] in [-1, 1] on the CPU (blocks until run)."""
        return self.submit(session, latent, slot).result()

    def submit(self, session, latent: torch.Tensor, slot: int) -> concurrent.futures.Future:
        """render() without waiting: the future of the image (a cluster replica awaits it on its event loop)."""
        return self.worker.submit(session, (latent, slot))

    def end_session(self, session: int) -> None:
        self.worker.forget(session)

    @torch.no_grad()
    def _run(self, items: list) -> list[torch.Tensor]:
        if not self.batched:
            return [self._copies[slot].synthesize(z.to(self.device)).cpu() for z, slot in items]
        z = torch.cat([z for z, _ in items]).to(self.device)
        slots = torch.as_tensor([s for _, s in items], device=self.device)
        return list(self.run_batched(z, slots).cpu().split(1))

    def engines(self) -> list[str]:
        """The compile chain's choice for each batch size built so far (none at batch 1)."""
        return list(self.run_batched.built.values()) if self.batched else []

    def close(self) -> None:
        self.worker.close()


def check_rank(pack, rank: int) -> None:
    """A low-rank bank holds a pack exactly only when it was tuned at rank <= the bank's (the bank
    recovers the factors by SVD); a full-tuned delta's spectrum is flat, so cutting it would change the
    avatar: such a pack is refused (cached photos are enrolled again under the recipe's rank anyway)."""
    tuned_at = (pack.meta.get("tuning") or {}).get("rank", 0) if pack.tuned else rank
    if not 0 < tuned_at <= rank:
        raise UserError(f"this avatar was tuned at {'full rank' if not tuned_at else f'rank {tuned_at}'}; "
                        f"this engine serves avatars tuned at rank <= {rank}: enroll its photo again")


class _SlotView:
    """G.synthesize for one slot of the batched generator."""

    def __init__(self, batched, slot: int):
        self.batched, self.slot = batched, slot

    def synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        slots = torch.full((len(latent),), self.slot, dtype=torch.long, device=latent.device)
        return self.batched(latent, slots)
