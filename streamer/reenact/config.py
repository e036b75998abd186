"""ReenactConfig: which models run and how each session moves, built once from the command line."""
from __future__ import annotations

from dataclasses import dataclass


NET3D_CHOICES = ("auto", "mediapipe", "torch")   # the default zoo's face reader (ReenactConfig.net3d)


@dataclass(frozen=True)
class ReenactConfig:
    zoo: str = "default"
    weights: str | None = None            # vox256 weight folder
    directions: str | None = None         # A file (default: the zoo's)
    device: str = "cpu"                   # where the per-frame networks run
    net3d: str = "auto"                   # mediapipe | torch (batched across sessions) | auto: torch on a GPU
    threads: int = 1                      # torch CPU threads
    tune_directions: int = 0              # steps of tuning A to each photo enrolled (0: off)
    progress: bool = True
    # per session
    relative: bool = True                 # motion relative to the driver's first frame (else the paper's)
    smooth: bool = True                   # One-Euro on the pose
    correct: bool = True                  # per-avatar response correction
    feedback_every: int = 0               # head-pose feedback every N frames (0: off)

    @classmethod
    def from_args(cls, args) -> "ReenactConfig":
        return cls(zoo=args.zoo, weights=args.weights, directions=args.directions, device=args.device,
                   net3d=args.net3d,
                   threads=max(1, args.threads), tune_directions=max(0, args.tune_directions),
                   progress=not args.quiet, relative=not args.absolute, smooth=not args.no_smooth,
                   correct=not args.no_correction, feedback_every=max(0, args.feedback))

    def session(self) -> dict:
        """AvatarReenactor's per-session options."""
        return {"relative": self.relative, "smooth": self.smooth, "correct": self.correct,
                "feedback_every": self.feedback_every}
