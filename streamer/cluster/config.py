"""ClusterConfig: where the avatar replicas run and how they are sized, built once from the command line."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from engines.core.errors import UserError

APP = "facereenact"              # the Serve application (one deployment: the generator stage)
NAMESPACE = "facereenact"        # the Ray namespace of the pack store and of front-ends
STORE = "facereenact-packs"      # the pack store actor's name
TOKEN_ENV = "REENACT_CLUSTER_TOKEN"
MIN_TOKEN = 16


@dataclass(frozen=True)
class ClusterConfig:
    address: str = "local"               # "local": start a Ray cluster in this process; else ray.init's address
    token: str | None = None             # shared secret between front-ends and replicas (local: generated)
    replicas: int = 1                    # fixed replica count (when autoscaling is off)
    avatars_per_replica: int = 2         # each replica's LRU of avatars (serve.multiplexed)
    num_cpus: float = 0.5                # per replica
    num_gpus: float = 0.0                # per replica; fractional shares a GPU (e.g. 0.25: four replicas a GPU)
    min_replicas: int = 0                # autoscaling when max_replicas > 0
    max_replicas: int = 0
    target_ongoing: float = 4.0          # autoscaling: requests in flight per replica it aims for
    max_ongoing: int = 16                # per replica; the router queues beyond this
    device: str = "cpu"                  # where each replica's generator runs ("cuda" with num_gpus)
    threads: int = 1                     # torch threads per replica
    timeout_s: float = 5.0               # one frame's round trip before the front-end gives up on it
    session_idle_s: float = 30.0         # a replica forgets a session silent this long (its front-end gone)
    pack_dir: str | None = None          # a folder every node and front-end shares: packs go there, not
                                         # through the pack store (both are hash-checked on arrival)
    local_cpus: int = 2                  # local: the Ray cluster's CPUs

    @property
    def local(self) -> bool:
        return self.address == "local"

    @property
    def autoscaling(self) -> dict | None:
        if self.max_replicas <= 0:
            return None
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing}

    def check(self) -> None:
        """UserError for settings no cluster can run."""
        if not self.address:
            raise UserError("--cluster needs an address: local, auto, or HOST:PORT of a Ray head")
        if self.replicas < 1 or self.avatars_per_replica < 1:
            raise UserError("--replicas and --avatars-per-replica must be at least 1")
        if self.num_cpus < 0 or self.num_gpus < 0 or (self.num_gpus > 1 and self.num_gpus != int(self.num_gpus)):
            raise UserError(f"--num-gpus {self.num_gpus:g}: a fraction of one GPU, or a whole number")
        if self.max_replicas and not 0 <= self.min_replicas <= self.max_replicas:
            raise UserError(f"--min-replicas {self.min_replicas} must lie in 0..--max-replicas {self.max_replicas}")
        if not self.local and not self.token:
            raise UserError(f"--cluster {self.address} needs the cluster's token: --cluster-token or env {TOKEN_ENV} "
                            f"(python -m streamer.cluster start prints it)")
        if self.token is not None and len(self.token) < MIN_TOKEN:
            raise UserError(f"the cluster token must have at least {MIN_TOKEN} characters")

    @classmethod
    def from_args(cls, args) -> "ClusterConfig":
        return cls(address=args.cluster, token=args.cluster_token or None, replicas=args.replicas,
                   avatars_per_replica=args.avatars_per_replica, num_cpus=args.replica_cpus,
                   num_gpus=args.num_gpus, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                   device=args.replica_device, pack_dir=args.pack_dir)


def add_cluster_arguments(parser: argparse.ArgumentParser, address: bool = True) -> None:
    """The flags that size a deployment (run_stream.py --cluster, python -m streamer.cluster)."""
    g = parser.add_argument_group("cluster (Ray Serve; pip install -e .[cluster])")
    if address:
        g.add_argument("--cluster", default=None, metavar="local|auto|HOST:PORT",
                       help="render on Ray Serve replicas: 'local' starts a Ray cluster on this machine; "
                            "an address connects to one started with python -m streamer.cluster start")
    g.add_argument("--cluster-token", default=os.environ.get(TOKEN_ENV),
                   help=f"the token between front-ends and replicas (or env {TOKEN_ENV})")
    g.add_argument("--replicas", type=int, default=1, help="generator replicas (default 1)")
    g.add_argument("--avatars-per-replica", type=int, default=2, help="avatars each replica keeps loaded (LRU, default 2)")
    g.add_argument("--replica-cpus", type=float, default=0.5, help="CPUs reserved per replica (default 0.5)")
    g.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica, fractions allowed (default 0)")
    g.add_argument("--replica-device", default="cpu", help="where a replica's generator runs (cpu, cuda)")
    g.add_argument("--min-replicas", type=int, default=0, help="autoscaling: fewest replicas")
    g.add_argument("--max-replicas", type=int, default=0, help="autoscaling: most replicas (0: off, --replicas fixed)")
    g.add_argument("--pack-dir", default=None, help="a folder front-ends and replicas share: avatar packs go there "
                                                    "instead of through Ray's object store")
