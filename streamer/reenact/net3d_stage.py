"""The Net3D stage: every session's driving frame -> its face reading, with the landmark net batched
across sessions by one micro-batching scheduler (streamer.reenact.scheduler).

Each session gets a reader with the interface of MediaPipe's (`read(rgb, t_ms) -> FaceReading | None`,
`close()`), so the motion state after it does not know which Net3D it has. Per session, in its own
thread: the frame goes to the device, the detector port runs when the session has no track, and the
tracking crop is cut. The scheduler's worker then runs the landmark net, blendshapes and face geometry
on all the crops it has gathered in one call (engines.method.net3d_torch).
"""
from __future__ import annotations

import itertools

import numpy as np
import torch

from engines.accel.buckets import Buckets
from engines.method.net3d import FaceReading
from engines.method.net3d_torch import MIN_PRESENCE, TorchNet3D, frame_tensor, reading
from streamer.reenact.scheduler import StageWorker

BUDGET_MS = 8.0     # how long a frame may wait for companions (Net3D is the first of two batched stages)


class Net3DStage:
    def __init__(self, net: TorchNet3D, max_batch: int | None = None, budget_ms: float = BUDGET_MS, log=print):
        self.net, self.budget_ms = net, budget_ms
        self.device = net.device
        self.max_batch = max_batch or (1 if self.device.type == "cpu" else 16)
        # on a GPU through the compile chain, one engine per batch size (the CPU: the module itself)
        self.landmark_net = Buckets(net.landmark_net, self.device, "landmark net", log=log)
        self.worker = StageWorker(self._run, max_batch=self.max_batch, budget_ms=budget_ms, name="net3d-stage")
        self.stats = self.worker.stats
        self._ids = itertools.count()

    def reader(self) -> "StageReader":
        self.worker.join()
        return StageReader(self, next(self._ids))

    def _run(self, items: list) -> list[dict]:
        patches = torch.stack([patch for patch, _, _ in items])
        rois = torch.stack([roi for _, roi, _ in items])
        return self.net(patches, rois, [size for _, _, size in items], self.landmark_net)

    def engines(self) -> list[str]:
        """The compile chain's choice for each batch size built so far (none on the CPU)."""
        return list(self.landmark_net.built.values())

    def close(self) -> None:
        self.worker.close()


class StageReader:
    """One session's Net3D on the shared stage: its face track and its place in the scheduler."""

    def __init__(self, stage: Net3DStage, session: int, min_presence: float = MIN_PRESENCE):
        self.stage, self.session, self.min_presence = stage, session, min_presence
        self.roi: torch.Tensor | None = None
        self.detections = 0
        self._closed = False

    def read(self, image: np.ndarray, timestamp_ms: int | None = None) -> FaceReading | None:
        """The face in an RGB uint8 frame, or None. A track that loses the face looks again with the
        detector on the same frame, as MediaPipe's image mode would find it."""
        frame = frame_tensor(image, self.stage.device)
        for _ in range(2):
            tracked = self.roi is not None
            if not tracked:
                self.detections += 1
                self.roi = self.stage.net.detect(frame)
                if self.roi is None:
                    return None
            size = (frame.shape[1], frame.shape[0])
            item = (self.stage.net.crop(frame, self.roi), self.roi, size)
            result = self.stage.worker.submit(self.session, item).result()
            if result["presence"] >= self.min_presence and bool(torch.isfinite(result["roi_next"]).all()):
                self.roi = result["roi_next"]
                return reading(result)
            self.roi = None
            if not tracked:   # a fresh detection the landmark net does not confirm: no face
                return None
        return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.stage.worker.leave(self.session)
