"""The command lines: --avatar required with one clear line, --version, keys in --help, help and a
default on every flag of run_stream, streamer.avatar.enroll and calibration.train, one name for quiet."""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def parser_of(module: str) -> argparse.ArgumentParser:
    """The parser a CLI main() builds (caught at parse_args, before anything loads)."""
    caught = {}

    class Caught(Exception):
        pass

    def grab(self, *a, **k):
        caught["parser"] = self
        raise Caught

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = grab
    try:
        importlib.import_module(module).main([])
    except Caught:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original
    return caught["parser"]


def flags(parser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS
            and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


@pytest.mark.parametrize("module", ["streamer.avatar.enroll", "calibration.train"])
def test_every_flag_has_help_and_a_default(module):
    for a in flags(parser_of(module)):
        name = a.option_strings[0]
        assert a.help and len(a.help) > 10, f"{module} {name}: no help"
        assert a.required or "default" in a.help, f"{module} {name}: help does not say the default"


def test_run_stream_flags_have_help():
    import run_stream
    for a in flags(run_stream.build_parser()):
        assert a.help and len(a.help) > 10, a.option_strings


def test_enroll_zoo_has_choices_and_quiet_is_one_name():
    p = parser_of("streamer.avatar.enroll")
    zoo = next(a for a in p._actions if "--zoo" in a.option_strings)
    assert list(zoo.choices) == ["default", "vox256"]
    shown = [s for a in flags(p) for s in a.option_strings]
    assert "--quiet" in shown and "--no-progress" not in shown
    assert p.parse_args(["--avatar", "x.png", "--no-progress"]).quiet      # the old name still works
    t = parser_of("calibration.train")
    assert t.parse_args(["--quiet"]).no_progress and t.parse_args(["--no-progress"]).no_progress
    assert "--no-progress" not in [s for a in flags(t) for s in a.option_strings]


def run(*args):
    return subprocess.run([sys.executable, "run_stream.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_avatar_is_required_with_one_line():
    r = run("--source", "lavfi:testsrc2", "--sink", "none")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: --avatar is required: a portrait photo")
    r = run("--webrtc")
    assert r.returncode == 2 and "--avatar is required" in r.stderr


def test_version_and_keys_in_help():
    from importlib.metadata import version
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"facereenact {version('facereenact')}"
    r = run("--help")
    assert r.returncode == 0
    keys = r.stdout[r.stdout.index("Keys"):]
    for key in ("r  re-take", "s  side-by-side", "a  next avatar", "q  quit", "?  show the keys"):
        assert key in keys
    from streamer.stream.controls import KEYS_HELP
    for k in ("r reset", "s side-by-side", "a next avatar", "q quit", "? help"):   # the keys the code knows
        assert k in KEYS_HELP


def test_console_command_and_a_user_install_without_test_tools():
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["facereenact"] == "run_stream:main"
    import run_stream
    assert callable(run_stream.main)
    script = (ROOT / "scripts" / "install.sh").read_text()
    assert '-m pip install -e .\n' in script and "[test]" not in script.replace('pip install -e ".[test]" adds', "")
    r = subprocess.run(["bash", "scripts/install.sh", "--gpu"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == "error: unknown option --gpu (use --cpu or --cuda)"
    r = subprocess.run(["bash", "scripts/install.sh", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--cuda" in r.stdout and "TORCH_SPEC" in r.stdout and "set -e" not in r.stdout
