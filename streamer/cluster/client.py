"""The front-end's side of the cluster: connect (or start a local cluster), upload avatar packs, and a
generator stage whose frames render on the replicas.

A front-end (run_stream.py --webrtc --cluster ..., the benchmarks, the tests) keeps each session's
Net3D reader and motion state, as the in-process engine does: it is the same AvatarReenactor on an
Engine whose generator stage is `RemoteGeneratorStage`. Per frame it sends the latent code and the
avatar's id and gets the small image back; a frame whose replica failed (died, timed out, refused)
raises ClusterUnavailable, which the stream pipeline shows as a status frame, and the next frame is
routed to a live replica. Ray is imported on first use, so the product runs without it.
"""
from __future__ import annotations

import importlib.util
import itertools
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engines.core.errors import UserError
from streamer.avatar.pack import AvatarPack
from streamer.cluster.config import APP, NAMESPACE, STORE, ClusterConfig
from streamer.cluster.packs import PackStore, pack_bytes, pack_id, put_shared
from streamer.reenact.config import ReenactConfig
from streamer.reenact.engine import Engine, PerPack, ReenactorFactory
from streamer.web.config import is_loopback

MISSING = "--cluster needs ray[serve]: pip install -e .[cluster]"
REFUSED = "the cluster refused the token (--cluster-token / REENACT_CLUSTER_TOKEN)"


class ClusterUnavailable(RuntimeError):
    """This frame did not render (its replica died, timed out or was replaced); the next one retries."""


def import_ray():
    """(ray, ray.serve), or UserError with the one line that says how to install them."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise UserError(MISSING) from None
    return ray, serve


def ray_token_auth() -> None:
    """Use Ray's own token authentication (gRPC between nodes and drivers) whenever a Ray token is at
    hand (RAY_AUTH_TOKEN, or ray_token_path(), which Ray writes when it starts a cluster): a head
    started with it refuses drivers without it, and a driver only sends it in token mode. Call before
    ray is first imported (it reads the mode then), and not for a cluster started in-process (Ray
    decides that one's mode itself)."""
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN")
                                              or ray_token_path().is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def ray_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


def protect_ray_token() -> None:
    """Ray writes its token file with the process umask (0644 as a rule): make it the owner's alone, as
    any credential, once Ray (or `ensure_ray_token`) has written it."""
    path = ray_token_path()
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except FileNotFoundError:
        pass


LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_ray_on_loopback(host: str = "127.0.0.1") -> None:
    """A cluster on this machine only binds loopback. Ray turns a node address of 127.0.0.1 into the
    machine's network address (services.resolve_ip_for_localhost) unless its multi-node mode is off,
    and then its GCS, raylet, workers and agents bind every interface; with the switch off (its
    documented name says Windows/macOS, where it is off by default) the node address stays 127.0.0.1
    and every one of them binds 127.0.0.1. Ray reads it when first imported, and its processes inherit
    it: call before import_ray(). A host that is not loopback (a multi-node head) leaves Ray as it is."""
    if is_loopback(host):
        os.environ[LOOPBACK_SWITCH] = "0"


def ray_available() -> bool:
    """Whether ray is installed (without importing it; the [cluster] extra brings Serve with it)."""
    return importlib.util.find_spec("ray") is not None


def start_local_ray(cpus: int) -> None:
    """A Ray cluster in this process, every server of it on loopback, no dashboard, quiet."""
    keep_ray_on_loopback()
    ray, _ = import_ray()
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=cpus, namespace=NAMESPACE, _node_ip_address="127.0.0.1",
                 include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    protect_ray_token()


def deploy(cfg: ClusterConfig, reenact: ReenactConfig, token: str, detached: bool = False):
    """Serve (no HTTP proxy: front-ends call by handle), the pack store, and the generator deployment
    sized by cfg; returns when its replicas are up, with the pack store's handle (a store that is not
    detached lives while that handle does). An existing deployment is updated in place."""
    ray, serve = import_ray()
    from streamer.cluster.deployment import build_app   # imports ray
    serve.start(proxy_location="Disabled")
    store = ray.remote(PackStore).options(name=STORE, namespace=NAMESPACE, num_cpus=0, max_restarts=-1,
                                          lifetime="detached" if detached else None,
                                          get_if_exists=True).remote(token)
    serve.run(build_app(cfg, reenact, token), name=APP, route_prefix=None)
    return store


def undeploy() -> None:
    """Remove the deployment and the pack store (the Ray cluster stays)."""
    ray, serve = import_ray()
    try:
        serve.delete(APP)
    except Exception:
        pass
    try:
        ray.kill(ray.get_actor(STORE, namespace=NAMESPACE))
    except ValueError:
        pass


@dataclass
class ClusterStats:
    """What the replicas said about the frames this front-end sent: by replica, the latest counters."""
    frames: int = 0
    failures: int = 0
    replicas: dict = field(default_factory=dict)      # replica -> its last info (pid, held, loads, evictions, reloads)
    per_session: dict = field(default_factory=dict)   # session -> {"replica": the last one, "frames", "moves"}
    hops: deque = field(default_factory=lambda: deque(maxlen=20000))   # (round trip ms, in the replica ms)

    def record(self, session: str, info: dict, round_ms: float | None = None) -> None:
        self.frames += 1
        if round_ms is not None and "ms" in info:
            self.hops.append((round_ms, info["ms"]))
        self.replicas[info["replica"]] = info
        s = self.per_session.setdefault(session, {"replica": info["replica"], "frames": 0, "moves": 0})
        s["moves"] += s["replica"] != info["replica"]
        s["replica"] = info["replica"]
        s["frames"] += 1

    def forget(self, session: str) -> None:
        self.per_session.pop(session, None)

    def summary(self) -> dict:
        r = list(self.replicas.values())
        return {"frames": self.frames, "failures": self.failures, "replicas": len(r),
                "sessions": len(self.per_session), "most_held": max((i["held"] for i in r), default=0),
                "loads": sum(i["loads"] for i in r), "evictions": sum(i["evictions"] for i in r),
                "reloads": sum(i["reloads"] for i in r)}


class ClusterClient:
    """A front-end's connection: the deployment's handle, the token, the packs it uploaded."""

    def __init__(self, cfg: ClusterConfig, token: str, owns_cluster: bool = False, store=None):
        ray, serve = import_ray()
        self.ray, self.cfg, self.token, self.owns_cluster = ray, cfg, token, owns_cluster
        self.handle = serve.get_app_handle(APP)
        self.store = store if store is not None else ray.get_actor(STORE, namespace=NAMESPACE)
        self.frontend = secrets.token_hex(4)
        self._uploaded: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, cfg: ClusterConfig, reenact: ReenactConfig, log=print) -> "ClusterClient":
        """cfg.local: start a Ray cluster here and deploy on it (a fresh token unless cfg has one); else join
        the cluster at cfg.address, whose deployment `python -m streamer.cluster start` made."""
        cfg.check()
        if not cfg.local:
            ray_token_auth()
        keep_ray_on_loopback("127.0.0.1" if cfg.local else cfg.address)   # this driver's own servers too
        ray, _ = import_ray()
        if cfg.local:
            token = cfg.token or secrets.token_urlsafe(24)
            log(f"cluster: starting a local Ray cluster ({cfg.local_cpus} CPUs) with {cfg.replicas} replica(s)")
            start_local_ray(cfg.local_cpus)
            store = deploy(cfg, reenact, token)
            return cls(cfg, token, owns_cluster=True, store=store)
        try:
            if not ray.is_initialized():
                ray.init(address=cfg.address, namespace=NAMESPACE, log_to_driver=False, logging_level="WARNING")
            client = cls(cfg, cfg.token)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise UserError(f"--cluster {cfg.address}: cannot reach the deployment ({str(e)[:120]}); start it "
                            f"with python -m streamer.cluster start") from None
        client.check_token()
        client.check_zoo(reenact.zoo)
        return client

    def check_zoo(self, zoo: str) -> None:
        """UserError unless the replicas run this front-end's zoo (the latents and packs are the zoo's)."""
        try:
            theirs = self.handle.stats.remote(self.token).result(timeout_s=max(self.cfg.timeout_s, 30.0))["zoo"]
        except PermissionError:
            raise UserError(REFUSED) from None
        except Exception as e:
            raise UserError(f"--cluster {self.cfg.address}: the deployment does not answer ({_reason(e)})") from None
        if theirs != zoo:
            raise UserError(f"--cluster {self.cfg.address} runs zoo '{theirs}', this front-end '{zoo}' (--zoo)")

    def check_token(self) -> None:
        try:
            self.ray.get(self.store.count.remote(self.token), timeout=30)
        except PermissionError:
            raise UserError(REFUSED) from None

    def ensure(self, aid: str, data: bytes | None = None, force: bool = False) -> None:
        with self._lock:
            if aid in self._uploaded and not force:
                return
        if self.cfg.pack_dir and data is not None:     # the shared folder instead of the object store
            try:
                put_shared(self.cfg.pack_dir, aid, data)
            except OSError as e:
                raise UserError(f"--pack-dir {self.cfg.pack_dir}: cannot write the avatar pack ({e})") from None
            with self._lock:
                self._uploaded.add(aid)
            return
        ray, wait = self.ray, max(self.cfg.timeout_s, 30.0)    # a pack is a few MB
        try:
            if not ray.get(self.store.has.remote(self.token, aid), timeout=wait):
                if data is None:
                    raise ClusterUnavailable(f"avatar {aid[:12]} left the pack store")
                ray.get(self.store.put.remote(self.token, aid, data), timeout=wait)
        except PermissionError:
            raise UserError(REFUSED) from None
        except ClusterUnavailable:
            raise
        except Exception as e:
            raise ClusterUnavailable(f"the pack store is unavailable ({_reason(e)})") from None
        with self._lock:
            self._uploaded.add(aid)

    def call(self, method: str, aid: str, *args):
        """One request to a replica holding avatar `aid`; ClusterUnavailable when it fails."""
        resp = None
        try:
            resp = getattr(self.handle.options(multiplexed_model_id=aid), method).remote(self.token, *args)
            return resp.result(timeout_s=self.cfg.timeout_s)
        except PermissionError:
            raise UserError(REFUSED) from None
        except Exception as e:
            if isinstance(e, TimeoutError) and resp is not None:
                resp.cancel()
            raise ClusterUnavailable(f"avatar replica unavailable ({_reason(e)}); resuming on another "
                                     f"replica") from None

    def forget(self, session: str) -> None:
        try:
            self.handle.forget.remote(self.token, session)      # any replica; the others forget idle ones
        except Exception:
            pass

    def replica_stats(self, calls: int = 8) -> dict:
        """replica -> its stats, from `calls` requests (Serve picks the replica; not every one may answer)."""
        out = {}
        for _ in range(calls):
            try:
                s = self.handle.stats.remote(self.token).result(timeout_s=self.cfg.timeout_s)
                out[s["replica"]] = s
            except Exception:
                pass
        return out

    def close_deployment(self) -> None:
        """Remove the deployment and the pack store (the Ray cluster stays)."""
        self.store = None
        undeploy()

    def close(self) -> None:
        """A local cluster this client started goes, deployment and all; a remote one stays."""
        if self.owns_cluster:
            ray, serve = import_ray()
            self.close_deployment()
            try:
                serve.shutdown()
            finally:
                ray.shutdown()


def _reason(e: BaseException) -> str:
    """The exception's type, and its cause's last line for an error raised inside a replica."""
    cause = getattr(e, "cause", None)
    if cause is not None:
        lines = str(cause).strip().splitlines() or [""]
        return f"{type(cause).__name__}: {lines[-1][:160]}"
    return type(e).__name__


def _named(pack: AvatarPack) -> tuple[str, bytes]:
    data = pack_bytes(pack)
    return pack_id(data), data


class RemoteGeneratorStage:
    """GeneratorStage's methods (streamer.reenact.generator_stage), rendering on the cluster's replicas."""

    max_batch = 1
    batched = False

    def __init__(self, client: ClusterClient):
        self.client = client
        self.stats = ClusterStats()
        self._avatars: dict[int, tuple[str, bytes]] = {}
        self._slots = itertools.count(1)
        self._ids = itertools.count()
        self._recheck: set[str] = set()
        self._lock = threading.Lock()
        self._pack_ids = PerPack()   # each pack's id and bytes: read and hashed by its first session only

    def add_avatar(self, pack: AvatarPack) -> int:
        aid, data = self._pack_ids.get(pack, ("id",), lambda: _named(pack))
        self.client.ensure(aid, data)
        with self._lock:
            slot = next(self._slots)
            self._avatars[slot] = (aid, data)
        return slot

    def remove_avatar(self, slot: int) -> None:
        with self._lock:
            self._avatars.pop(slot, None)

    def avatar_id(self, slot: int) -> str:
        return self._avatars[slot][0]

    def generator(self, slot: int) -> "_RemoteGenerator":
        return _RemoteGenerator(self, slot)

    def new_session(self) -> str:
        return f"{self.client.frontend}-{next(self._ids)}"

    def _call(self, slot: int, method: str, *args):
        aid, data = self._avatars[slot]
        try:
            if aid in self._recheck:   # after a failure: the store may have restarted empty
                self.client.ensure(aid, data, force=True)
                self._recheck.discard(aid)
            return self.client.call(method, aid, *args)
        except ClusterUnavailable:
            self.stats.failures += 1
            self._recheck.add(aid)
            raise

    def render(self, session: str, latent: torch.Tensor, slot: int) -> torch.Tensor:
        t0 = time.perf_counter()
        image, info = self._call(slot, "render", session, latent.detach().float().cpu().numpy())
        self.stats.record(session, info, (time.perf_counter() - t0) * 1e3)
        return torch.from_numpy(image.copy())     # Ray hands back read-only arrays

    def end_session(self, session: str) -> None:
        self.stats.forget(session)
        self.client.forget(session)

    def close(self) -> None:
        pass


class _RemoteGenerator:
    """G.synthesize for one avatar, on a replica (a session's load-time measurements)."""

    def __init__(self, stage: RemoteGeneratorStage, slot: int):
        self.stage, self.slot = stage, slot

    def synthesize(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.stage._call(self.slot, "synthesize", latents.detach().float().cpu().numpy()).copy())


class ClusterReenactorFactory(ReenactorFactory):
    """ReenactorFactory whose sessions render on the cluster: Net3D and motion state here, G on replicas."""

    def __init__(self, config: ReenactConfig, cluster: ClusterConfig, default_avatar: str | Path | None = None,
                 log=print, client: ClusterClient | None = None):
        super().__init__(config, default_avatar, log)
        self.cluster, self.client = cluster, client

    def _make_engine(self, generator_stage=None) -> Engine:
        if self.client is None:
            self.client = ClusterClient.connect(self.cluster, self.config, self.log)
        return super()._make_engine(RemoteGeneratorStage(self.client))

    def connect(self) -> None:
        """Start or join the cluster now (otherwise the first session does)."""
        _ = self.engine

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
