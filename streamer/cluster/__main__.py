"""`python -m streamer.cluster start|show|stop`: a deployment on a Ray cluster of this machine.

  python -m streamer.cluster start --replicas 2      # a Ray head on 127.0.0.1:6380 + the deployment
  python -m streamer.cluster show                    # replicas, avatars each holds, frames served
  python -m streamer.cluster stop                    # the deployment, the pack store, the Ray head

`start` prints the address and the token front-ends need:
  REENACT_CLUSTER_TOKEN=... python run_stream.py --avatar me.png --webrtc --cluster 127.0.0.1:6380
and keeps both in ~/.cache/facereenact/cluster.json (mode 0600) for `show` and `stop`. `--address`
deploys on a Ray cluster that is already running (a KubeRay RayService does this for you: docs/scaling.md).
The head is started on 127.0.0.1 unless --host says otherwise, and then every Ray server of it binds
127.0.0.1 only (client.keep_ray_on_loopback); a head on another host binds what Ray binds, behind Ray's
token (docs/scaling.md, Security).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from engines.core.errors import UserError, main_guard
from streamer.cluster.client import (ClusterClient, deploy, import_ray, keep_ray_on_loopback, protect_ray_token,
                                     ray_token_auth, ray_token_path, undeploy)
from streamer.cluster.config import APP, NAMESPACE, TOKEN_ENV, ClusterConfig, add_cluster_arguments
from streamer.reenact.config import ReenactConfig

STATE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "facereenact" / "cluster.json"
PORT = 6380


def ensure_ray_token() -> None:
    """A head started here uses Ray's token authentication: make Ray's token (~/.ray/auth_token) if
    there is none yet, so this process and the head agree on it from the start."""
    if os.environ.get("RAY_AUTH_TOKEN") or ray_token_path().is_file():
        protect_ray_token()
        return
    r = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "get-auth-token", "--generate"],
                       capture_output=True, text=True)
    if r.returncode or not ray_token_path().is_file():
        raise UserError("could not make Ray's auth token (ray get-auth-token --generate): "
                        + ((r.stderr or r.stdout).strip().splitlines() or ["no output"])[-1][:160])
    protect_ray_token()


def start_head(host: str, port: int, cpus: int) -> int:
    """`ray start --head --block` in its own process group (so `stop` ends exactly it) -> its pid."""
    STATE.parent.mkdir(parents=True, exist_ok=True)
    with open(STATE.parent / "cluster-head.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                                 f"--node-ip-address={host}", f"--port={port}", f"--num-cpus={cpus}",
                                 "--include-dashboard=false", "--disable-usage-stats"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc.pid


def stop_head(pid: int) -> None:
    """SIGTERM the head's `ray start --block` (it stops what it started), then its process group."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def join(ray, address: str, wait_s: float = 0.0) -> None:
    """ray.init on the cluster at address, retrying for wait_s (a head that is still starting)."""
    end = time.monotonic() + wait_s
    while True:
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level="WARNING")
            return
        except ConnectionError as e:
            if time.monotonic() > end:
                raise UserError(f"no Ray cluster at {address} ({str(e)[:120]})") from None
            time.sleep(1.0)


def save_state(address: str, token: str, head_pid: int | None) -> None:
    STATE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(STATE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"address": address, "token": token, "head_pid": head_pid}, f)


def load_state() -> dict:
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        raise UserError(f"no deployment started here ({STATE} missing): python -m streamer.cluster start") from None


def start(args) -> int:
    cfg = ClusterConfig.from_args(argparse.Namespace(**{**vars(args), "cluster": args.address or "local"}))
    token = cfg.token or secrets.token_urlsafe(24)
    cfg = ClusterConfig(**{**cfg.__dict__, "token": token})
    cfg.check()
    keep_ray_on_loopback(args.address or args.host)   # before ray is imported; the head inherits it
    ray, _ = import_ray()
    if STATE.is_file():
        raise UserError(f"a deployment was started here already ({STATE}): python -m streamer.cluster stop")
    address = args.address or f"{args.host}:{args.port}"
    head = start_head(args.host, args.port, args.cpus) if args.address is None else None
    try:
        join(ray, address, wait_s=60.0 if head else 0.0)
        deploy(cfg, ReenactConfig(zoo=args.zoo, weights=args.weights, directions=args.directions), token,
               detached=True)
    except BaseException:
        if head:
            stop_head(head)
        raise
    save_state(address, token, head)
    print(f"deployment '{APP}' up on {address}: {cfg.replicas if not cfg.autoscaling else cfg.autoscaling} "
          f"replica(s), {cfg.avatars_per_replica} avatars each")
    print(f"front-ends: {TOKEN_ENV}={token} python run_stream.py --avatar me.png --webrtc --cluster {address}")
    return 0


def show(args) -> int:
    state = load_state()
    keep_ray_on_loopback(state["address"])
    ray, serve = import_ray()
    join(ray, state["address"])
    status = serve.status().applications.get(APP)
    if status is None:
        raise UserError(f"no deployment '{APP}' on {state['address']}")
    d = status.deployments["generator"]
    print(f"{APP} on {state['address']}: {status.status}, replicas {dict(d.replica_states)}")
    client = ClusterClient(ClusterConfig(address=state["address"], token=state["token"]), state["token"])
    for name, s in sorted(client.replica_stats(calls=4 * max(1, sum(d.replica_states.values()))).items()):
        print(f"  replica {name} (pid {s['pid']}): {s['held']} avatar(s) {[a[:12] for a in s['avatars']]}, "
              f"{s['scheduler']['frames']} frames, {s['sessions']} session(s), loads {s['loads']} "
              f"evictions {s['evictions']} reloads {s['reloads']}")
    return 0


def stop(args) -> int:
    state = load_state()
    keep_ray_on_loopback(state["address"])
    ray, serve = import_ray()
    try:
        join(ray, state["address"])
        undeploy()
        serve.shutdown()
        ray.shutdown()
    except UserError:
        pass                           # the head is gone already
    if state.get("head_pid"):
        stop_head(state["head_pid"])
    STATE.unlink(missing_ok=True)
    print(f"stopped the deployment on {state['address']}" + (" and its Ray head" if state.get("head_pid") else ""))
    return 0


@main_guard
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m streamer.cluster", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start", help="start a Ray head here (or join --address) and deploy")
    s.add_argument("--address", default=None, help="deploy on this running Ray cluster instead of starting a head")
    s.add_argument("--host", default="127.0.0.1", help="the head's address (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=PORT, help=f"the head's GCS port (default {PORT})")
    s.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs the head offers")
    s.add_argument("--zoo", default="default", choices=["default", "vox256"])
    s.add_argument("--weights", default=None, help="vox256 weights folder (on every node)")
    s.add_argument("--directions", default=None)
    add_cluster_arguments(s, address=False)
    sub.add_parser("show", help="the deployment's replicas and the avatars each holds")
    sub.add_parser("stop", help="remove the deployment (and the Ray head start made)")
    args = ap.parse_args(argv)
    if args.command == "start" and args.address is None:
        ensure_ray_token()
    ray_token_auth()      # this process joins a cluster with Ray's token, as the head it starts uses
    return {"start": start, "show": show, "stop": stop}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
