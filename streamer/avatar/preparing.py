"""Avatars being prepared for the WebRTC page. Enrolling a photo takes about a minute on a CPU, so the
server starts it at once (the --avatar photo as the server starts, each upload as it arrives) on one
worker thread at low CPU priority (a live session on the same cores keeps its frame rate), and keeps
its progress: /status reports it, the page shows it, and an offer or avatar switch waits for it.

`prepare(path, report)` does the work (load or enroll, warm caches; blocking) and calls
report(stage, done, total) as it goes (streamer.avatar.enroll.Enroller's on_progress); it may return the
avatar pack, whose display crop then becomes the avatar's thumbnail. No `prepare`: every avatar is
ready at once (test engines, fakes).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import io
import math
import multiprocessing as mp
import os
import queue
import tempfile
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, ImageOps

from engines.core.errors import UserError
from engines.core.photo import read_photo
from engines.method.zoos import load_zoo
from streamer.avatar.enroll import _PRIVATE_CACHES, Enroller, load_or_enroll, private_cache
from streamer.avatar.pack import AvatarPack

# What each stage is called on the page, where it starts and ends on the progress bar (its share of
# a default-zoo enrollment's time, measured on this project's loaded 2-core machine: making the pose
# targets and tuning take about a third each), and, for stages without steps, about how long it takes
# (s): their bar creeps toward the stage's end on that time scale, so a long step-less stage still
# shows that it is working.
STAGES = {
    "queued": ("waiting for another avatar", 0.0, 0.0, 0),
    "loading": ("loading models", 0.0, 0.03, 5),
    "align": ("finding the face", 0.03, 0.05, 5),
    "invert": ("fitting the face", 0.05, 0.20, 0),
    "targets": ("making expressions", 0.20, 0.50, 40),
    "tune": ("tuning the avatar", 0.50, 0.92, 0),
    "check": ("checking the avatar", 0.92, 0.99, 10),
    "ready": ("ready", 1.0, 1.0, 0),
    "failed": ("failed", 0.0, 0.0, 0),
}
THUMB_SIZE = 128
MAX_NAME = 60
# CPU niceness of the preparation (its thread, and the enrollment process): on a busy CPU live frames
# come first (an enrollment at 10 still took 12% of a call's frames on a loaded 2-core machine); an
# idle core is used in full whatever the niceness
PREPARE_NICE = 19


def display_name(name, fallback: str = "photo") -> str:
    """A client-supplied file name fit to show: its last path component, printable characters only,
    at most MAX_NAME characters."""
    if not isinstance(name, str):
        return fallback
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] not in "CZ" or c == " ").strip()
    if len(name) > MAX_NAME:
        stem, dot, ext = name.rpartition(".")
        name = (stem[:MAX_NAME - len(ext) - 2] + "\u2026." + ext) if dot and len(ext) <= 5 else name[:MAX_NAME - 1] + "\u2026"
    return name or fallback


def thumbnail_jpeg(image, size: int = THUMB_SIZE) -> bytes:
    """RGB uint8 HxWx3 (or a photo path) -> a square JPEG thumbnail, centre-cropped."""
    if isinstance(image, (str, Path)):
        image = read_photo(image)
    im = ImageOps.fit(Image.fromarray(image), (size, size), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PREPARE_NICE)   # this thread only (Linux)
    except (OSError, AttributeError):
        pass


@dataclass
class Prep:
    """One avatar's preparation: state queued -> preparing -> ready | failed."""
    id: str
    name: str
    path: Path | None
    state: str = "queued"
    stage: str = "queued"
    done: int = 0
    total: int = 0
    error: str | None = None
    seconds: float | None = None
    thumbnail: bytes | None = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future, repr=False)
    _t0: float | None = None
    _stage_t0: float = 0.0

    def report(self, stage: str, done: int = 0, total: int = 0) -> None:
        if stage != self.stage:
            self._stage_t0 = time.monotonic()
        self.stage, self.done, self.total = stage, done, total

    @property
    def progress(self) -> float:
        if self.state == "ready":
            return 1.0
        if self.state == "failed":
            return 0.0
        _, lo, hi, typical_s = STAGES.get(self.stage, ("", 0.0, 0.0, 0))
        if self.total:
            part = min(self.done, self.total) / self.total
        elif typical_s:   # no steps to count: approach (never reach) the stage's end
            part = 0.9 * (1 - math.exp(-(time.monotonic() - self._stage_t0) / typical_s))
        else:
            part = 0.0
        return lo + (hi - lo) * part

    def message(self) -> str:
        if self.state == "ready":
            return "ready"
        if self.state == "failed":
            return f"failed: {self.error}"
        label = STAGES.get(self.stage, (self.stage,))[0]
        steps = f" {self.done}/{self.total}" if self.total else ""
        return f"{label}{steps}"

    def snapshot(self) -> dict:
        d = {"id": self.id, "name": self.name, "state": self.state, "stage": self.stage,
             "progress": round(self.progress, 3), "message": self.message(), "error": self.error,
             "thumbnail": self.thumbnail is not None}
        if self.seconds is not None:
            d["seconds"] = round(self.seconds, 1)
        elif self._t0 is not None:
            d["elapsed"] = round(time.monotonic() - self._t0, 1)
        return d


class Preparer:
    """Avatar preparations, one at a time, newest `keep` remembered (the default avatar always)."""

    def __init__(self, prepare: Callable | None = None, keep: int = 32):
        self._prepare = prepare
        self.keep = keep
        self.items: dict[str, Prep] = {}
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        # a daemon thread, not an executor: ending the server must not wait out a minute of enrollment
        self._thread = threading.Thread(target=self._work, name="avatar-prepare", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        _lower_priority()
        while (p := self._queue.get()) is not None:
            self._run(p)

    def start(self, aid: str, path: Path | None, name: str) -> Prep:
        """Begin preparing `path` as avatar `aid` (a restart of an id replaces its entry)."""
        p = Prep(aid, name, Path(path) if path is not None else None)
        self.items.pop(aid, None)
        self.items[aid] = p
        uploads = [k for k in self.items if k != "default"]
        for k in uploads[:max(0, len(uploads) - self.keep)]:
            self.items.pop(k)
        if self._closed:
            self._finish(p, "failed", "the server is closing")
        else:
            self._queue.put(p)
        return p

    def _finish(self, p: Prep, state: str, error: str | None = None) -> None:
        p.state, p.error = state, error
        p.stage = state
        if p._t0 is not None:
            p.seconds = time.monotonic() - p._t0
        try:
            p.future.set_result(p)
        except concurrent.futures.InvalidStateError:   # finished already (shutdown raced the worker)
            pass

    def _run(self, p: Prep) -> None:
        if self._closed:
            return self._finish(p, "failed", "the server is closing")
        p.state, p._t0 = "preparing", time.monotonic()
        p.report("loading")
        try:
            if p.path is not None and p.path.suffix.lower() not in (".avatar", ".safetensors"):
                try:
                    p.thumbnail = thumbnail_jpeg(p.path)
                except UserError:
                    pass       # prepare() below names the problem
            result = self._prepare(p.path, p.report) if self._prepare is not None else None
            display = getattr(result, "display", None)
            if display is not None:
                p.thumbnail = thumbnail_jpeg(display)     # the avatar as enrolled: its face crop
            self._finish(p, "ready")
        except UserError as e:
            self._finish(p, "failed", self._named(p, str(e)))
        except Exception as e:   # an engine bug must not leave the page waiting forever
            self._finish(p, "failed", self._named(p, f"{type(e).__name__}: {str(e)[:200]}"))

    @staticmethod
    def _named(p: Prep, message: str) -> str:
        """An error about an upload names the photo as the user knows it, not the id it is stored by."""
        return message.replace(p.path.name, p.name) if p.path is not None else message

    def get(self, aid: str) -> Prep | None:
        return self.items.get(aid)

    async def wait(self, aid: str) -> Prep:
        """The finished preparation of `aid` (ready or failed); KeyError if unknown."""
        p = self.items[aid]
        if not p.future.done():
            await asyncio.shield(asyncio.wrap_future(p.future))
        return p

    def snapshot(self) -> list[dict]:
        return [p.snapshot() for p in list(self.items.values())]

    def line(self) -> str | None:
        """The console's view: the avatars not ready yet, e.g. 'avatar me.png: tuning 120/600 (31%)'."""
        busy = [p for p in list(self.items.values())
                if p.state in ("queued", "preparing") or (p.state == "failed" and p.id == "default")]
        return " | ".join(f"avatar {p.name}: {p.message()}"
                          + (f" ({100 * p.progress:.0f}%)" if p.state == "preparing" else "") for p in busy) or None

    def shutdown(self) -> None:
        """No more preparations; queued ones fail (their waiters get an answer). One running goes on
        in its daemon thread until it ends or the process exits."""
        self._closed = True
        self._queue.put(None)
        for p in list(self.items.values()):
            if p.state == "queued":
                self._finish(p, "failed", "the server is closing")


# ------------------------------------------------------------------ enrollment in its own process
def enroll_in_subprocess(avatar, report=None, *, zoo: str = "default", weights=None, directions=None,
                         tune_directions: int = 0, log=None, nice: int = PREPARE_NICE, enroll_kw: dict | None = None):
    """Enroll photo `avatar` in a child process at low CPU priority and return its pack. A thread would
    compete with live sessions for the interpreter lock (a niced thread holding it stalls them); a
    process competes only for the CPU, where niceness gives the sessions precedence. The child caches
    the pack as load_or_enroll does (the server's private cache for uploads); report(stage, done,
    total) and log(message) get its progress. enroll_kw (tests): enroll with these Enroller.enroll
    arguments instead, uncached. Errors -> UserError (one line)."""
    ctx = mp.get_context("spawn")      # a fresh interpreter: no copy of the server's threads and locks
    name = Path(avatar).name
    with tempfile.TemporaryDirectory(prefix="reenact-enroll-") as tmp:
        out = Path(tmp) / "pack.avatar"
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_enroll_child, name="avatar-enroll", daemon=True,
                           args=(send, str(avatar), zoo, weights, directions, tune_directions,
                                 {str(k): str(v) for k, v in _PRIVATE_CACHES.items()}, str(out), nice, enroll_kw))
        proc.start()
        send.close()
        error = None
        try:
            while True:
                try:
                    msg = receive.recv()
                except EOFError:       # the child ended (or died) without a word
                    break
                if msg[0] == "progress" and report is not None:
                    report(*msg[1:])
                elif msg[0] == "log" and log is not None:
                    log(msg[1])
                elif msg[0] == "error":
                    error = msg[1]
                elif msg[0] == "done":
                    break
        finally:
            receive.close()
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if error is not None:
            raise UserError(error)
        if not out.is_file():
            raise UserError(f"enrolling {name} failed: the enrollment process ended with exit code {proc.exitcode}")
        return AvatarPack.load(out)


def _enroll_child(conn, avatar, zoo, weights, directions, tune_directions, private, out, nice, enroll_kw):
    try:
        os.nice(nice)
    except OSError:
        pass
    try:
        torch.set_num_threads(1)
        for folder, cache in private.items():
            private_cache(folder, cache)

        def report(stage, done=0, total=0):
            conn.send(("progress", stage, done, total))
        report("loading")
        z = load_zoo(zoo, weights, directions)
        if enroll_kw is None:
            pack = load_or_enroll(avatar, z, False, lambda m: conn.send(("log", m)), tune_directions,
                                  on_progress=report)
        else:
            pack = Enroller(z, False, lambda m: conn.send(("log", m)), on_progress=report).enroll(
                read_photo(avatar), Path(avatar).name, **enroll_kw)
        pack.save(out)
        conn.send(("done",))
    except UserError as e:
        conn.send(("error", str(e)))
    except BaseException as e:     # noqa: BLE001 - reported to the server as one line
        conn.send(("error", f"enrolling {Path(avatar).name} failed: {type(e).__name__}: {str(e)[:200]}"))
    finally:
        conn.close()
