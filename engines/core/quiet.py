"""Keep MediaPipe's native start-up logging off the console.

MediaPipe's C++ runtime writes absl/glog lines ("WARNING: Logging before InitGoogle() ...", "W0000 ...
Feedback manager requires a model with a single signature ...", "INFO: Created TensorFlow Lite XNNPACK
delegate ...") straight to file descriptor 2 while a graph is created and first run; GLOG_minloglevel
does not stop all of them and Python's sys.stderr never sees them. `native_quiet()` points fd 2 at a
temporary file for that moment, restores it, and writes back every captured line that is not such a
native log line, so a message another thread printed meanwhile is delayed, never lost.

Set FACEREENACT_NATIVE_LOGS=1 to see the native lines (debugging MediaPipe itself).
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading

# absl/glog prefix (severity letter, MMDD, time, thread id, file:line]) and TFLite's INFO lines
NATIVE_LINE = re.compile(
    r"^(WARNING: Logging before InitGoogle\(\)"
    r"|WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\]]+:\d+\]"
    r"|INFO: Created TensorFlow Lite"
    r"|INFO: Initialized TensorFlow Lite)")

_lock = threading.Lock()
_state = {"depth": 0, "saved": None, "file": None}


def _start() -> None:
    try:
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - a closed or replaced sys.stderr must not stop the caller
        pass
    try:
        saved = os.dup(2)
    except OSError:              # no fd 2 at all: nothing to silence
        return
    capture = tempfile.TemporaryFile()
    os.dup2(capture.fileno(), 2)
    _state["saved"], _state["file"] = saved, capture


def _stop() -> None:
    saved, capture = _state["saved"], _state["file"]
    _state["saved"] = _state["file"] = None
    if saved is None:
        return
    try:
        sys.stderr.flush()
    except Exception:  # noqa: BLE001
        pass
    os.dup2(saved, 2)
    os.close(saved)
    capture.seek(0)
    data = capture.read()
    capture.close()
    keep = [part for part in re.split(rb"(?<=[\r\n])", data)
            if part and not NATIVE_LINE.match(part.decode("utf-8", "replace"))]
    if keep:
        os.write(2, b"".join(keep))


@contextlib.contextmanager
def native_quiet():
    """Silence native log lines on fd 2 inside the block (nestable, thread-safe: the outermost block
    of overlapping ones restores the descriptor)."""
    if os.environ.get("FACEREENACT_NATIVE_LOGS"):
        yield
        return
    with _lock:
        _state["depth"] += 1
        if _state["depth"] == 1:
            _start()
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0:
                _stop()
