"""StreamConfig: where frames come from and go, built once from the command line."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StreamConfig:
    source: str | None = None            # camera index, /dev/videoN, a file, lavfi:...; None: the default
    size: str | None = None              # capture size WxH
    fps: float = 30.0                    # camera / test-source frame rate
    mjpeg: bool = False
    loop: bool = True                    # live: a file source starts over at its end
    realtime: bool = False               # file -> file paced like a camera
    sinks: tuple[str, ...] | None = None  # None: the default (vcam; with --webrtc only the browsers)
    vcam_device: str | None = None
    vcam_backend: str | None = None
    duration: float | None = None        # stop after this many seconds
    avatar: str | None = None            # the session's avatar (photo or pack)
    avatar_dir: str | None = None        # photos the 'a' key cycles through
    side_by_side: bool | None = None     # None: the reenactor's own default

    @classmethod
    def from_args(cls, args) -> "StreamConfig":
        return cls(source=args.source, size=args.size, fps=args.fps, mjpeg=args.mjpeg, loop=not args.no_loop,
                   realtime=args.realtime, sinks=tuple(args.sink) if args.sink is not None else None,
                   vcam_device=args.vcam_device, vcam_backend=args.vcam_backend, duration=args.duration,
                   avatar=args.avatar, avatar_dir=args.avatar_dir, side_by_side=args.side_by_side)
