#!/usr/bin/env python
"""Live face reenactment: `python run_stream.py --avatar me.png` (webcam 0 -> virtual camera).

Examples
  python run_stream.py --avatar assets/astronaut.png --source assets/pexels_woman.mp4 --sink out/demo.mp4 --side-by-side
  python run_stream.py --avatar me.png --webrtc            # browser page on http://127.0.0.1:8080
  python run_stream.py --avatar me.png --zoo vox256 --weights DIR
  python run_stream.py --avatar me.png --webrtc --cluster local    # the generator on Ray Serve replicas (docs/scaling.md)

Keys (live mode, in this terminal)
  r  re-take the neutral reference (the driver's current face becomes "no motion")
  s  side-by-side output on/off (driver | avatar | result)
  a  next avatar (the --avatar photo, then the photos in --avatar-dir)
  q  quit (also ctrl-D, ctrl-C)
  ?  show the keys
The same actions over HTTP: POST /control {"action": "reset" | "side_by_side" | "next_avatar"} (docs/streaming.md).
"""
from __future__ import annotations

import argparse
import sys

import torch

from engines.core.errors import UserError

from streamer.cluster.client import MISSING, ClusterReenactorFactory, ray_available
from streamer.cluster.config import ClusterConfig, add_cluster_arguments
from streamer.live import LiveConfig, add_live_arguments, run_live
from streamer.reenact.config import NET3D_CHOICES, ReenactConfig
from streamer.reenact.engine import ReenactorFactory


class OneLineParser(argparse.ArgumentParser):
    """Flag errors as one `error: ...` line and exit 2, like every other user error."""

    def error(self, message):
        if "required: --avatar" in message:
            message = "--avatar is required: a portrait photo (JPEG/PNG/WebP) or an .avatar pack, " \
                      "e.g. --avatar assets/astronaut.png"
        self.exit(2, f"error: {message} (see --help)\n")


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as dist_version
    try:
        return dist_version("facereenact")
    except PackageNotFoundError:
        return "unknown (not installed: bash scripts/install.sh)"


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(description="Drive an avatar photo with your face (Bounareli et al., BMVC 2022)",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--version", action="version", version=f"facereenact {version()}")
    g = ap.add_argument_group("avatar and models")
    g.add_argument("--avatar", required=True,
                   help="required: portrait photo (enrolled once, cached) or an .avatar pack")
    g.add_argument("--zoo", default="default", choices=["default", "vox256"],
                   help="model set: default (ships with pip packages, CPU) or vox256 (the paper's, your weights)")
    g.add_argument("--weights", metavar="DIR",
                   help="folder with the vox256 weight files (python -m engines.weights fetch --dir DIR; "
                        "docs/weights.md)")
    g.add_argument("--directions", help="direction matrix file (default: the zoo's)")
    g.add_argument("--side-by-side", action="store_true", default=None,
                   help="output driver | avatar | result (default: the result only)")
    g.add_argument("--absolute", action="store_true",
                   help="absolute motion (the paper's dp = p_driver - p_avatar) instead of relative to the "
                        "driver's first frame")
    g.add_argument("--no-smooth", action="store_true", help="no temporal smoothing of the pose (default: One-Euro)")
    g.add_argument("--no-correction", action="store_true",
                   help="use A exactly as learned: no per-avatar response calibration (docs/reenactment.md)")
    g.add_argument("--feedback", type=int, default=0, metavar="N",
                   help="head-pose feedback: read the avatar's output every N frames and steer its angles to "
                        "the driver's (3 is a good choice: head turns ~2x more accurate, ~3 ms per frame; "
                        "default 0 = off; docs/reenactment.md)")
    g.add_argument("--tune-directions", type=int, nargs="?", const=200, default=0, metavar="STEPS",
                   help="when enrolling a photo, also tune A to it (default zoo; 200 steps if no number, "
                        "~2.5 min more, cached; docs/reenactment.md)")
    g.add_argument("--device", default="cpu",
                   help="where the per-frame networks run: cpu (default), cuda, cuda:N, or auto")
    g.add_argument("--net3d", default="auto", choices=NET3D_CHOICES,
                   help="the default zoo's face reader: MediaPipe's runtime (each session its own), torch (its "
                        "networks ported, batched across sessions on --device), or auto (default): torch on a "
                        "GPU, MediaPipe on the CPU, where it is faster")
    g.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: capture, MediaPipe and the encoder need the other cores; "
                        "more threads only add waiting on small per-frame work)")
    g.add_argument("--quiet", action="store_true", help="no progress bars (enrollment)")
    g.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)   # other tools' name
    add_live_arguments(ap)
    add_cluster_arguments(ap)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    reenact, live = ReenactConfig.from_args(args), LiveConfig.from_args(args)
    torch.set_num_threads(reenact.threads)
    # models load on first use, once, shared by every session; the WebRTC server prepares avatars
    # ahead of sessions through factory.prepare (a new photo enrolls in its own low-priority process)
    log = lambda m: print(m, file=sys.stderr)   # noqa: E731
    if args.cluster is None:
        factory = ReenactorFactory(reenact, default_avatar=live.stream.avatar, log=log)
        return run_live(live, factory, factory.prepare)
    # --cluster: Net3D and each session's motion state here, the generator on Ray Serve replicas
    cluster = ClusterConfig.from_args(args)
    try:
        cluster.check()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not ray_available():
        print(f"error: {MISSING}", file=sys.stderr)
        return 2
    factory = ClusterReenactorFactory(reenact, cluster, default_avatar=live.stream.avatar, log=log)
    try:
        return run_live(live, factory, factory.prepare)
    finally:
        factory.close()


if __name__ == "__main__":
    sys.exit(main())
