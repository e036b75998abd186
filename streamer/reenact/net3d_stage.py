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

import torch

from engines.accel.buckets import Buckets
from engines.method.net3d_torch import Reader, TorchNet3D
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


class StageReader(Reader):
    """One session's Net3D on the shared stage: its own face track, its crops read through the stage's
    scheduler together with the other sessions'."""

    def __init__(self, stage: Net3DStage, session: int):
        super().__init__(stage.net, track=True, run=lambda item: stage.worker.submit(session, item).result())
        self.stage, self.session = stage, session
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.stage.worker.leave(self.session)
