"""The Ray Serve deployment: the engine's generator stage in a replica, with a few avatars loaded.

One deployment, `generator`. A front-end sends (the session's latent code, the avatar's id as Serve's
multiplexed model id) and gets the rendered image back: for the default zoo a 1x3x64x64 float tensor
(48 KB), where a camera frame would be 900 KB. Each replica keeps an LRU of avatars
(`@serve.multiplexed`, `avatars_per_replica`); Serve routes an avatar's requests to a replica that has it
loaded, else to the replica with the fewest avatars. An avatar the LRU evicted is loaded again from the
pack store when it is next asked for. Inside the replica the sessions' frames go through the product's
own GeneratorStage and its micro-batching scheduler (batched across sessions on a GPU, one frame at a
time on each avatar's tuned copy of G on the CPU), so a replica renders what the in-process engine
renders. Every call carries the cluster token; one without it is refused.

This module imports ray: only streamer.cluster.client imports it, on first use.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time

import numpy as np
import ray
import torch
from ray import serve

from engines.core.device import resolve_device
from engines.method.zoos import load_zoo
from streamer.cluster.config import NAMESPACE, STORE, TOKEN_ENV, ClusterConfig
from streamer.cluster.packs import PackStore, load_checked, read_shared, require_token
from streamer.reenact.config import ReenactConfig
from streamer.reenact.generator_stage import GeneratorStage


class LoadedAvatar:
    """One avatar in a replica's LRU: its slot in the generator stage. Evicted (`__del__`, which Serve
    calls when the LRU drops it) while frames of it are in flight, it leaves the stage after the last."""

    def __init__(self, replica: "GeneratorReplica", avatar_id: str, slot: int):
        self.replica, self.id, self.slot = replica, avatar_id, slot
        self._lock = threading.Lock()
        self._busy = 0
        self._evicted = False

    def acquire(self) -> bool:
        with self._lock:
            if self._evicted:
                return False
            self._busy += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._busy -= 1
            last = self._evicted and self._busy == 0
        if last:
            self.replica.stage.remove_avatar(self.slot)

    def __del__(self):
        with self._lock:
            if self._evicted:
                return
            self._evicted = True
            now = self._busy == 0
        self.replica.evicted(self.id)
        if now:
            self.replica.stage.remove_avatar(self.slot)


class GeneratorReplica:
    def __init__(self, spec: dict):
        self._token = spec["token"]
        # the pack store: the one `deploy` made, or (a Serve config / KubeRay deployment) made here
        ray.remote(PackStore).options(name=STORE, namespace=NAMESPACE, lifetime="detached", num_cpus=0,
                                      max_restarts=-1, get_if_exists=True).remote(self._token)
        torch.set_num_threads(spec["threads"])
        self.device = resolve_device(spec["device"])
        self.zoo = load_zoo(spec["zoo"], spec["weights"], spec["directions"])
        generator = self.zoo.generator.to(self.device)
        self.stage = GeneratorStage(generator, self.zoo.recipe.tuning.layers, self.device,
                                    rank=self.zoo.recipe.tuning.rank)
        async def load(avatar_id: str) -> LoadedAvatar:    # the LRU's size is the deployment's setting
            return await self._load(avatar_id)
        self.avatar = serve.multiplexed(max_num_models_per_replica=spec["avatars_per_replica"])(load)
        self.loaded: dict[str, LoadedAvatar] = {}
        self.loads = self.evictions = self.reloads = 0
        self._ever_evicted: set[str] = set()
        self._sessions: dict[str, float] = {}
        self._idle_s = spec["session_idle_s"]
        self._pack_dir = spec.get("pack_dir")
        self._pruned = time.monotonic()
        try:
            self.name = serve.get_replica_context().replica_id.unique_id
        except Exception:   # outside Serve (unit use)
            self.name = f"pid{os.getpid()}"

    # -- avatars ----------------------------------------------------------------------------------
    async def _load(self, avatar_id: str) -> LoadedAvatar:
        data = None
        if self._pack_dir:
            data = await asyncio.to_thread(read_shared, self._pack_dir, avatar_id)
        if data is None:
            store = ray.get_actor(STORE, namespace=NAMESPACE)
            data = await store.get.remote(self._token, avatar_id)
        pack = await asyncio.to_thread(load_checked, data, avatar_id)
        pack.check(self.zoo)
        slot = await asyncio.to_thread(self.stage.add_avatar, pack)
        self.loads += 1
        self.reloads += avatar_id in self._ever_evicted
        av = LoadedAvatar(self, avatar_id, slot)
        self.loaded[avatar_id] = av
        return av

    def evicted(self, avatar_id: str) -> None:
        self.evictions += 1
        self._ever_evicted.add(avatar_id)
        self.loaded.pop(avatar_id, None)

    async def _avatar(self) -> LoadedAvatar:
        avatar_id = serve.get_multiplexed_model_id()
        if not avatar_id:
            raise ValueError("no avatar id: call with handle.options(multiplexed_model_id=AVATAR_ID)")
        while True:
            av = await self.avatar(avatar_id)
            if av.acquire():
                return av
            await asyncio.sleep(0)    # evicted between the lookup and now: load it again

    def _check(self, token) -> None:
        require_token(token, self._token, "generator replica")

    def _info(self) -> dict:
        return {"replica": self.name, "pid": os.getpid(), "held": len(self.loaded), "loads": self.loads,
                "evictions": self.evictions, "reloads": self.reloads}

    # -- frames -----------------------------------------------------------------------------------
    async def render(self, token: str, session: str, latent: np.ndarray) -> tuple[np.ndarray, dict]:
        """One session's latent [1, *latent_shape] -> its avatar's image [1, 3, R, R] in [-1, 1]."""
        self._check(token)
        t0 = time.perf_counter()
        self._seen(session)
        av = await self._avatar()
        try:
            fut = self.stage.submit(session, torch.from_numpy(latent), av.slot)
            image = await asyncio.wrap_future(fut)
        finally:
            av.release()
        # the time this frame spent in the replica (avatar lookup or load, scheduler, generator)
        return image.numpy(), {**self._info(), "ms": (time.perf_counter() - t0) * 1e3}

    async def synthesize(self, token: str, latents: np.ndarray) -> np.ndarray:
        """A batch of latents on one avatar (a session's load-time measurements): [N, 3, R, R]."""
        self._check(token)
        av = await self._avatar()
        try:
            return await asyncio.to_thread(self._synthesize, av.slot, latents)
        finally:
            av.release()

    @torch.no_grad()
    def _synthesize(self, slot: int, latents: np.ndarray) -> np.ndarray:
        return self.stage.generator(slot).synthesize(torch.from_numpy(latents).to(self.device)).cpu().numpy()

    async def forget(self, token: str, session: str) -> None:
        """A session ended: the scheduler stops expecting its frames."""
        self._check(token)
        self._sessions.pop(session, None)
        self.stage.end_session(session)

    async def stats(self, token: str) -> dict:
        self._check(token)
        self._prune(time.monotonic())
        return {**self._info(), "zoo": self.zoo.name, "avatars": sorted(self.loaded), "sessions": len(self._sessions),
                "scheduler": self.stage.stats.summary()}

    def _seen(self, session: str) -> None:
        now = time.monotonic()
        self._sessions[session] = now
        self._prune(now)

    def _prune(self, now: float) -> None:
        """Forget sessions silent for session_idle_s: front-ends that died never said goodbye."""
        if now - self._pruned > self._idle_s / 3:
            self._pruned = now
            for s, t in list(self._sessions.items()):
                if now - t > self._idle_s:
                    del self._sessions[s]
                    self.stage.end_session(s)

    def __del__(self):
        self.stage.close()


def replica_spec(cfg: ClusterConfig, reenact: ReenactConfig, token: str) -> dict:
    return {"token": token, "threads": cfg.threads, "device": cfg.device, "zoo": reenact.zoo,
            "weights": reenact.weights, "directions": reenact.directions,
            "avatars_per_replica": cfg.avatars_per_replica, "session_idle_s": cfg.session_idle_s,
            "pack_dir": cfg.pack_dir}


def build_app(cfg: ClusterConfig, reenact: ReenactConfig, token: str):
    """The Serve application: the `generator` deployment sized by cfg."""
    options = {"ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
               "max_ongoing_requests": cfg.max_ongoing, "health_check_period_s": 2.0,
               "health_check_timeout_s": 10.0, "graceful_shutdown_timeout_s": 5.0}
    if cfg.autoscaling:
        options["autoscaling_config"] = cfg.autoscaling
    else:
        options["num_replicas"] = cfg.replicas
    return serve.deployment(GeneratorReplica, name="generator").options(**options).bind(
        replica_spec(cfg, reenact, token))


def app(args: dict):
    """The application for a Serve config file (a KubeRay RayService's serveConfigV2, `serve deploy`):
    import_path streamer.cluster.deployment:app, args {replicas, avatars_per_replica, num_cpus, num_gpus,
    min_replicas, max_replicas, device, zoo, weights}; the token comes from the environment
    (REENACT_CLUSTER_TOKEN, e.g. from a Kubernetes Secret), never from the config."""
    token = os.environ.get(TOKEN_ENV, "")
    fields = set(ClusterConfig.__dataclass_fields__) - {"address", "token"}
    unknown = sorted(set(args) - fields - {"zoo", "weights", "directions"})
    if unknown:
        raise ValueError(f"streamer.cluster.deployment:app: unknown args {unknown}")
    cfg = ClusterConfig(address="auto", token=token, **{k: v for k, v in args.items() if k in fields})
    cfg.check()
    reenact = ReenactConfig(zoo=args.get("zoo", "default"), weights=args.get("weights"),
                            directions=args.get("directions"))
    return build_app(cfg, reenact, token)
