"""CLI wiring for streaming: live (camera/file/lavfi -> virtual camera, files, WebRTC) and offline
(file -> file, every frame, not paced). run_stream.py adds these flags and calls run_live.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engines.core.errors import UserError
from engines.core.files import VIDEO_SUFFIXES
from streamer.stream.controls import Controller, StatusPrinter, TerminalKeys, list_avatars
from streamer.stream.pipeline import Pipeline, _close_engine, run_sink
from streamer.stream.sinks import FileSink, NullSink, open_sink
from streamer.stream.config import StreamConfig
from streamer.stream.sources import AVSource, Capture, open_source, parse_size, parse_source
from streamer.web.config import ServeConfig
from streamer.web.webapp import ServerParts, check_bind, is_loopback, normalize_token, start_server
from streamer.web.webrtc import allow_loopback_candidates



def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 (any free port) to 65535."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text[:20]!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port {v} is out of range (1..65535, or 0 for any free port)")
    return v


def positive(kind=float, most: float | None = None):
    """argparse type: a finite number > 0 (and <= most)."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'number' if kind is float else 'whole number'}, "
                                             f"got {text[:20]!r}") from None
        if not math.isfinite(v) or v <= 0 or (most is not None and v > most):
            raise argparse.ArgumentTypeError(f"{text[:20]} is out of range (above 0"
                                             + (f", at most {most:g})" if most is not None else ")"))
        return v
    parse.__name__ = kind.__name__   # argparse names the type in its messages
    return parse


def add_live_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("streaming")
    g.add_argument("--source", default=None,
                   help="camera index (0) or /dev/videoN, a video file, or lavfi:testsrc2 "
                        "(default: camera 0; with --webrtc: none, browsers send their camera)")
    g.add_argument("--size", default=None, help="capture size WxH (default 640x480 for cameras)")
    g.add_argument("--fps", type=positive(float, 240), default=30.0,
                   help="camera / test-source frame rate (default 30)")
    g.add_argument("--mjpeg", action="store_true", help="ask the webcam for MJPEG (needed for 30 fps on "
                                                          "many USB cameras)")
    g.add_argument("--no-loop", action="store_true", help="live mode: stop at the end of a file source")
    g.add_argument("--realtime", action="store_true", help="file -> file: pace to the clip's frame rate "
                                                           "like a camera (default: every frame, unpaced)")
    g.add_argument("--sink", action="append", default=None, metavar="vcam|vcam:DEVICE|FILE.mp4|none",
                   help="where frames go; repeatable (default: vcam; with --webrtc: only the browsers)")
    g.add_argument("--vcam-device", default=None, help="virtual camera device (e.g. /dev/video10)")
    g.add_argument("--vcam-backend", default=None, help="pyvirtualcam backend (v4l2loopback, obs, unitycapture)")
    g.add_argument("--webrtc", action="store_true", help="serve the WebRTC page on --host:--port")
    g.add_argument("--control", action="store_true", help="serve only the HTTP control/status endpoints")
    g.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; others need --token)")
    g.add_argument("--port", type=port_number, default=8080, help="HTTP port (default 8080)")
    g.add_argument("--token", default=os.environ.get("REENACT_TOKEN"),
                   help="access token required on every endpoint (or env REENACT_TOKEN; empty: none)")
    g.add_argument("--max-peers", type=positive(int, 64), default=8, help="most simultaneous WebRTC peers (default 8)")
    g.add_argument("--avatar-dir", default=None, help="folder of avatar photos for the 'a' key")
    g.add_argument("--duration", type=positive(float), default=None, help="stop after this many seconds")


@dataclass(frozen=True)
class LiveConfig:
    """What one run streams (StreamConfig) and serves (ServeConfig)."""
    stream: StreamConfig
    serve: ServeConfig

    @classmethod
    def from_args(cls, args) -> "LiveConfig":
        """From the flags add_live_arguments declares (plus --avatar and --side-by-side)."""
        return cls(StreamConfig.from_args(args), ServeConfig.from_args(args))


def is_offline(cfg: LiveConfig) -> bool:
    """file -> file(s) with no WebRTC: the offline mode (every frame, no drops, not paced)."""
    src, sinks = cfg.stream.source, cfg.stream.sinks or []
    if cfg.serve.serving or cfg.stream.realtime or src is None or not sinks:
        return False
    return Path(src).suffix.lower() in VIDEO_SUFFIXES and all(s != "vcam" and not s.startswith("vcam:") for s in sinks)


def run_live(cfg: LiveConfig, make_reenactor: Callable, prepare: Callable | None = None) -> int:
    """Run what the config asks for (offline when is_offline(cfg)). User errors -> one line, exit 2.
    prepare(path, report): loads or enrolls an avatar ahead of any session (streamer.avatar.preparing),
    so a WebRTC server prepares --avatar as it starts and the page shows the progress."""
    st = cfg.stream
    try:
        check_outputs(st.source, st.sinks or [])
        if is_offline(cfg):
            sinks = [s for s in st.sinks if s != "none"]
            if len(sinks) > 1:
                raise UserError("offline mode writes one file: give one --sink FILE.mp4")
            parse_source(str(st.source), live=False)       # a bad source or output path fails before
            sink = FileSink(sinks[0], None, live=False) if sinks else None   # any model loads
            reenactor = None
            try:
                reenactor = make_reenactor(st.avatar)
                _apply_side_by_side(st, reenactor)
                summary = run_offline(st.source, sink, reenactor, progress=_progress())
            finally:
                if sink is not None:
                    sink.close()     # idempotent; removes a file it created but never wrote
                # its MediaPipe runtime and the engine's stage worker stop before the interpreter
                # exits: left running, native threads aborted the process after a complete file
                _close_engine(reenactor)
            if summary["ended_early"]:
                # not an error: every frame the file holds was processed and written (exit 0)
                print(f"\nwarning: {summary['ended_early']}; the output holds the {summary['frames']} "
                      f"frames it had", file=sys.stderr)
            held = (f", {summary['held']} held at the last good frame (the avatar did not hold together)"
                    if summary["held"] else "")
            print(f"\n{summary['frames']} frames ({summary['no_face']} without a face{held}) at "
                  f"{summary['fps']:.1f} fps -> {summary['output']}"
                  + (" (source ended early)" if summary["ended_early"] else ""), file=sys.stderr)
            return 0
        return asyncio.run(_live(cfg, make_reenactor, prepare))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def check_outputs(source, sinks) -> None:
    """Refuse output files that would destroy an input or each other: the source itself, or one file
    given twice."""
    files = [Path(s) for s in sinks if s != "none" and s != "vcam" and not s.startswith("vcam:")]
    src = Path(source).expanduser() if source is not None else None
    seen: list[Path] = []
    for f in files:
        if src is not None and src.is_file() and f.exists() and os.path.samefile(src, f):
            raise UserError(f"--sink {f} is the --source file: it would be overwritten while read")
        if any(f == g or (f.exists() and g.exists() and os.path.samefile(f, g)) for g in seen):
            raise UserError(f"--sink {f} is given twice")
        seen.append(f)


def _apply_side_by_side(st: StreamConfig, reenactor) -> None:
    if st.side_by_side is not None:
        reenactor.side_by_side = bool(st.side_by_side)


def _progress():
    if not sys.stderr.isatty():
        return None
    return lambda n: print(f"\r{n} frames", end="", file=sys.stderr, flush=True) if n % 10 == 0 else None


# ---------------------------------------------------------------- offline
def run_offline(source_path, sink_path, reenactor, *, max_frames: int | None = None,
                progress: Callable[[int], None] | None = None) -> dict:
    """Every frame of `source_path` through `reenactor` into `sink_path` (.mp4, H.264, the source's
    exact frame rate; a FileSink opened without a rate; None: discard).
    -> {frames, no_face, fps, seconds, source_fps, stage_ms, output, ended_early}; ended_early: a
    message when the file held fewer frames than its index promised (truncated), else None."""
    spec = parse_source(str(source_path), live=False)
    return asyncio.run(_offline(spec, sink_path, reenactor, max_frames, progress))


async def _offline(spec, sink_path, reenactor, max_frames, progress) -> dict:
    loop = asyncio.get_running_loop()
    pipeline = Pipeline(reenactor, offline=True)
    capture = Capture(lambda: AVSource(spec), label=spec.label, max_attempts=0, max_frames=max_frames)
    capture.start(loop, pipeline.input)
    try:
        rate = capture.rate or capture.fps or 30.0
        if isinstance(sink_path, FileSink):
            sink, sink_path = sink_path, sink_path.path
            sink.set_rate(rate)
        else:
            sink = FileSink(sink_path, rate, live=False) if sink_path else NullSink()
    except BaseException:
        capture.stop()
        raise
    if progress is not None:
        write = sink.write
        sink.write = lambda item: (write(item), progress(sink.frames))
    t0 = time.perf_counter()
    ch = pipeline.subscribe(sink.name)
    tasks = [asyncio.ensure_future(pipeline.run()), asyncio.ensure_future(run_sink(sink, pipeline, ch))]
    # a failed output file ends the run now (not after processing the rest of the clip for nothing)
    tasks[1].add_done_callback(lambda _: pipeline.input.close() if pipeline.stats.sink_errors else None)
    try:
        await asyncio.gather(*tasks)
    finally:
        pipeline.close()          # first: wakes a capture thread waiting for room
        await asyncio.to_thread(capture.stop)
        for t in tasks:
            t.cancel()
    seconds = time.perf_counter() - t0
    if pipeline.error:
        raise UserError(f"{pipeline.error} (at frame {pipeline.stats.processed})")
    if pipeline.stats.sink_errors:     # before the source check: a failed sink stops the capture early
        raise UserError(f"writing {sink_path} failed: {next(iter(pipeline.stats.sink_errors.values()))}")
    if not capture.ended:
        raise UserError(f"reading {spec.url} failed: {capture.status}")
    s = pipeline.stats.snapshot()
    return {"frames": pipeline.stats.processed, "no_face": pipeline.stats.no_face, "held": pipeline.stats.held,
            "fps": pipeline.stats.processed / max(seconds, 1e-9), "seconds": seconds,
            "source_fps": float(rate), "stage_ms": s["stage_ms"],
            "output": str(sink_path) if sink_path else None, "ended_early": capture.ended_early}


# ---------------------------------------------------------------- live
class LiveSession:
    """Everything one `run_live` owns, so shutdown can release it in order."""

    def __init__(self):
        self.capture: Capture | None = None
        self.pipeline: Pipeline | None = None
        self.tasks: list[asyncio.Task] = []
        self.sinks: list = []
        self.running_sinks: list = []
        self.server = None
        self.peers = None
        self.keys: TerminalKeys | None = None
        self.printer: StatusPrinter | None = None

    def status_line(self) -> str:
        parts = []
        if self.pipeline is not None:
            parts.append(self.pipeline.stats.line())
            stages = self.pipeline.stats.snapshot()["stage_ms"]
            known = [k for k in ("face", "pose", "latent", "image") if k in stages]
            if known:
                parts.append(" ".join(f"{k} {stages[k]:.0f}" for k in known) + " ms")
        if self.capture is not None:
            status, ok = self.capture.state
            if not ok:
                parts.append(f"source: {status}")
        if self.peers is not None:
            parts.append(peers_line(self.peers.sessions.values()))
        preps = getattr(self.server, "preps", None)
        line = preps.line() if preps is not None else None
        if line:
            parts.append(line)
        return " | ".join(parts) or "idle"

    def status(self) -> dict:
        d = {}
        if self.pipeline is not None:
            d["server"] = self.pipeline.stats.snapshot()
            d["server"]["error"] = self.pipeline.error
        if self.capture is not None:
            status, ok = self.capture.state
            d["source"] = {"status": status, "ok": ok,
                           "captured": self.capture.captured, "reconnects": self.capture.reconnects}
        return d

    async def close(self) -> None:
        if self.keys is not None:
            self.keys.stop()
        if self.capture is not None:
            await asyncio.to_thread(self.capture.stop)
        if self.server is not None:
            await self.server.close()
        if self.pipeline is not None:
            self.pipeline.close()     # input closed -> run() ends -> sink channels closed -> sinks close
        if self.tasks:
            done, pending = await asyncio.wait(self.tasks, timeout=5)
            for t in pending:
                t.cancel()
        for s in self.sinks:          # sinks whose runner never started (a runner closes its own)
            if s not in self.running_sinks:
                try:
                    await asyncio.to_thread(s.close)
                except Exception:
                    pass
        if self.printer is not None:
            await self.printer.stop()


def peers_line(sessions) -> str:
    """'peers 2: 3f2a 24.1 fps 38 ms, 9c1e watching' (each driving peer's own fps and median latency)."""
    sessions = list(sessions)
    if not sessions:
        return "peers 0"
    shown = []
    for s in sessions:
        if s.pipeline is not None:
            st = s.pipeline.stats
            lat = st.snapshot()["latency_ms_p50"]
            shown.append(f"{s.id[:4]} {st.fps():.1f} fps " + (f"{lat:.0f} ms" if lat is not None else "- ms"))
        else:
            shown.append(f"{s.id[:4]} {'watching' if s.mode == 'watch' else 'connecting'}")
    return f"peers {len(sessions)}: " + ", ".join(shown)


async def _live(cfg: LiveConfig, make_reenactor, prepare=None) -> int:
    loop = asyncio.get_running_loop()
    st, srv = cfg.stream, cfg.serve
    size = parse_size(st.size)
    serve = srv.serving
    source_text = st.source if st.source is not None else (None if srv.webrtc else "0")
    sink_specs = list(st.sinks) if st.sinks is not None else ([] if srv.webrtc else ["vcam"])
    if serve:
        # an empty --token / REENACT_TOKEN: no token
        srv = dataclasses.replace(srv, token=normalize_token(srv.token))
        check_bind(srv.host, srv.token)
    if source_text is None and sink_specs:
        raise UserError("--sink needs a --source (with --webrtc alone, browsers bring the camera)")
    if srv.control and source_text is None:
        raise UserError("--control needs a --source to control")
    spec = parse_source(source_text, size=size, fps=st.fps, mjpeg=st.mjpeg, live=True,
                        loop=st.loop) if source_text is not None else None
    avatars = list_avatars(st.avatar_dir)
    avatar = st.avatar

    sess = LiveSession()
    sess.printer = StatusPrinter(sess.status_line)
    say = sess.printer.say
    stop = asyncio.Event()
    sink_tasks: list[asyncio.Task] = []
    failed: list[str] = []
    try:
        out_size = size or (640, 480)
        for s in sink_specs:   # open devices/files first: a missing virtual camera fails before model loading
            sess.sinks.append(open_sink(s, size=out_size, fps=st.fps, live=True,
                                        vcam_device=st.vcam_device, vcam_backend=st.vcam_backend))
        if spec is not None:
            sess.capture = Capture(lambda: open_source(spec), label=spec.label,
                                   on_status=lambda m: loop.call_soon_threadsafe(say, m))
            first = await asyncio.to_thread(open_source, spec)   # no camera / bad file: fail now
            try:
                reenactor = await asyncio.to_thread(make_reenactor, avatar)
            except BaseException:
                first.close()
                raise
            _apply_side_by_side(st, reenactor)
            cap = sess.capture
            sess.pipeline = Pipeline(reenactor, idle_size=out_size,
                                     status_text=cap.problem)
            for sink in sess.sinks:
                ch = sess.pipeline.subscribe(sink.name)
                sink_tasks.append(asyncio.ensure_future(run_sink(sink, sess.pipeline, ch)))
                sess.running_sinks.append(sink)
            sess.tasks += sink_tasks
            if sink_tasks:
                sess.tasks.append(asyncio.ensure_future(_watch_sinks(sink_tasks, sess.pipeline, say, failed,
                                                                     None if serve else stop)))
            sess.tasks.append(asyncio.ensure_future(sess.pipeline.run()))
            cap.start(loop, sess.pipeline.input, opened=first)
            for s in sess.sinks:
                if getattr(s, "device", None):
                    say(f"virtual camera: {s.device}")
        controller = Controller(sess.pipeline, make_reenactor, avatars=avatars, current=avatar) \
            if sess.pipeline is not None else None
        if serve:
            await _serve(sess, srv, st.side_by_side, make_reenactor, controller, avatar, say, prepare)
        if controller is not None:
            sess.keys = TerminalKeys(controller, stop.set, say)
            sess.keys.start(loop)
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError, ValueError):   # Windows; not the main thread
                pass
        sess.printer.start()
        waits = [asyncio.ensure_future(stop.wait())]
        if sess.pipeline is not None:
            waits.append(sess.tasks[-1])          # pipeline.run ends when a --no-loop file ends
        if st.duration is not None:
            waits.append(asyncio.ensure_future(asyncio.sleep(st.duration)))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            if w not in sess.tasks:
                w.cancel()
    finally:
        await sess.close()
    if sess.pipeline is not None:
        say(f"done: {sess.status_line()}")
    if sink_tasks and len(failed) == len(sink_tasks) and not serve:
        errors = sess.pipeline.stats.sink_errors
        raise UserError("every output failed: " + "; ".join(f"{n}: {errors[n]}" for n in failed))
    return 0


async def _watch_sinks(tasks, pipeline: Pipeline, say, failed: list, stop: asyncio.Event | None) -> None:
    """Report a failing output at once (the others go on). When every output has failed, nothing
    consumes the stream: set `stop` (not when serving: browsers may still watch)."""
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for name, err in pipeline.stats.sink_errors.items():
            if name not in failed:
                failed.append(name)
                say(f"output {name} failed: {err}" + ("; the other outputs go on" if len(failed) < len(tasks) else ""))
    if stop is not None and failed and len(failed) == len(tasks):
        stop.set()


async def _serve(sess: LiveSession, srv: ServeConfig, side_by_side: bool | None, make_reenactor, controller,
                 avatar, say, prepare=None) -> None:
    if is_loopback(srv.host):
        allow_loopback_candidates()   # so peers on this machine connect even without a network
    sess.server = await start_server(srv, ServerParts(make_reenactor, sess.pipeline, controller, avatar,
                                                      side_by_side, sess.status, prepare))
    sess.peers = sess.server.peers
    url = sess.server.url + "/" + (f"?token={srv.token}" if srv.token else "")
    print(f"{'open' if srv.webrtc else 'controls at'} {url}", flush=True)
    p = sess.server.preps.get("default") if srv.webrtc else None
    if p is not None and p.state != "ready":
        say(f"preparing avatar {p.name} (a new photo takes about a minute to enroll); the page shows "
            f"its progress and connects when it is ready")
