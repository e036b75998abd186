"""Controls for a running pipeline (reset the neutral reference, switch avatar, side-by-side), reached
from terminal keys and from HTTP; and the one-line status printer."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Callable

from engines.core.errors import UserError
from engines.core.files import IMAGE_SUFFIXES
from streamer.stream.pipeline import Pipeline

KEYS_HELP = "keys: r reset reference | s side-by-side | a next avatar | q quit | ? help"


def list_avatars(folder) -> list[Path]:
    if folder is None:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--avatar-dir {folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class Controller:
    """Actions on one pipeline. The reenactor factory builds a new reenactor for an avatar switch off
    the event loop (it may load models); the swap itself happens between two frames."""

    def __init__(self, pipeline: Pipeline, make_reenactor: Callable, *, avatars=(), current=None):
        self.pipeline, self.make_reenactor = pipeline, make_reenactor
        self.avatars = [Path(a) for a in avatars]
        self.current = current
        # the 'a' key cycles through the starting avatar (None: the engine's default) and the folder
        start = None if current is None else Path(current)
        self._cycle = ([start] if start not in self.avatars else []) + self.avatars

    async def handle(self, action: str, **kw) -> str:
        if action == "reset":
            await self.pipeline.reset_reference()
            return "neutral reference: next frame with a face"
        if action == "side_by_side":
            on = await self.pipeline.set_side_by_side(kw.get("value"))
            return f"side-by-side {'on' if on else 'off'}"
        if action == "next_avatar":
            return await self.next_avatar()
        if action == "avatar":
            return await self.set_avatar(kw["path"])
        shown = repr(action) if len(repr(action)) <= 60 else repr(action)[:60] + "...'"
        raise UserError(f"unknown control {shown} (reset, side_by_side, avatar, next_avatar)")

    async def set_avatar(self, path) -> str:
        new = await asyncio.to_thread(self.make_reenactor, path)
        await self.pipeline.swap_reenactor(new)
        self.current = path
        return f"avatar: {Path(path).name if path else 'default'}"

    async def next_avatar(self) -> str:
        if len(self._cycle) < 2:
            return "no other avatars (give --avatar-dir DIR, or upload one on the web page)"
        cur = None if self.current is None else Path(self.current)
        i = self._cycle.index(cur) if cur in self._cycle else -1
        return await self.set_avatar(self._cycle[(i + 1) % len(self._cycle)])


class TerminalKeys:
    """Single-key controls when stdin is a terminal (POSIX only: cbreak mode + a loop reader)."""

    def __init__(self, controller: Controller, on_quit: Callable[[], None], say: Callable[[str], None],
                 stream=None):
        self.controller, self.on_quit, self.say = controller, on_quit, say
        self.stream = stream or sys.stdin
        self._saved = None
        self._loop = None
        self._pending: set[asyncio.Task] = set()   # keep references: the loop holds tasks only weakly

    def start(self, loop: asyncio.AbstractEventLoop) -> bool:
        try:
            import termios
            import tty
        except ImportError:
            return False
        try:
            if not self.stream.isatty():
                return False
            fd = self.stream.fileno()
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        except (OSError, ValueError, AttributeError):
            return False
        self._loop = loop
        loop.add_reader(fd, self._on_input)
        self.say(KEYS_HELP)
        return True

    def _on_input(self) -> None:
        import os

        # os.read, not stream.read: a buffered read could keep keys where the loop reader never sees them
        data = os.read(self.stream.fileno(), 64).decode(errors="ignore")
        for key in data or "\x04":            # b"": end of input, like ctrl-D
            action = {"r": "reset", "s": "side_by_side", "a": "next_avatar"}.get(key.lower())
            if key in ("q", "Q", "\x04"):
                self.on_quit()
            elif key == "?":
                self.say(KEYS_HELP)
            elif action:
                task = asyncio.ensure_future(self._run(action))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    async def _run(self, action: str) -> None:
        try:
            self.say(await self.controller.handle(action))
        except Exception as e:  # a bad avatar file must not end the stream
            self.say(f"{action} failed: {e}")

    def stop(self) -> None:
        if self._loop is None:
            return
        import termios

        fd = self.stream.fileno()
        self._loop.remove_reader(fd)
        if self._saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, self._saved)
        self._loop = None


class StatusPrinter:
    """Prints `line()` every `every_s` seconds: rewritten in place on a terminal, else as log lines
    (every 5th tick, so logs stay readable). `say()` prints a message above the status line."""

    def __init__(self, line: Callable[[], str], stream=None, every_s: float = 1.0):
        self.line, self.stream, self.every_s = line, stream or sys.stderr, every_s
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._task: asyncio.Task | None = None
        self._ticks = 0

    def say(self, msg: str) -> None:
        prefix = "\r\x1b[K" if self.tty else ""
        print(f"{prefix}{msg}", file=self.stream, flush=True)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            self._ticks += 1
            if self.tty:
                print(f"\r\x1b[K{self.line()}", end="", file=self.stream, flush=True)
            elif self._ticks % 5 == 0:
                print(self.line(), file=self.stream, flush=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.tty:
            print(file=self.stream, flush=True)
