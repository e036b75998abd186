"""`python -m engines.weights fetch`: against a local HTTP server on 127.0.0.1 (nothing is downloaded).

The server speaks HTTP Range and imitates Google Drive's large-file flow (a "can't scan for viruses"
page whose form carries the confirm token; the file only with confirm=t and the page's uuid), so the
Drive code path, resume and the checks run exactly as against the real hosts.
"""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engines.weights import fetch as wf
from engines.core.errors import UserError
from engines.weights.files import VOX256, require

ROOT = Path(__file__).resolve().parents[1]
RANGES = ROOT.parent / "shared" / "fixtures" / "deca_eflame" / "data" / "ranges_voxceleb.npy"
DRIVE_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="{base}/download" method="get">
<input type="submit" id="uc-download-link" value="Download anyway"/>
<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-123"></form></body></html>"""


class Server:
    """files: URL path -> bytes; drive: Drive id -> bytes. Records (path, Range header, bytes sent)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drive: dict[str, bytes] = {}
        self.quota: set[str] = set()
        self.honour_range = True
        self.log: list[tuple[str, str | None, int]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                q = dict(urllib.parse.parse_qsl(url.query))
                if url.path == "/download" and q.get("id") in outer.drive:
                    if q["id"] in outer.quota:
                        return self._send(200, b"<html>Too many users have viewed or downloaded this file "
                                               b"recently.</html>", "text/html")
                    if q.get("confirm") != "t" or q.get("uuid") != "u-123":
                        page = DRIVE_PAGE.format(base=outer.url, id=q["id"]).encode()
                        return self._send(200, page, "text/html; charset=utf-8")
                    return self._file(outer.drive[q["id"]])
                if url.path in outer.files:
                    return self._file(outer.files[url.path])
                self._send(404, b"not found", "text/plain")

            def _file(self, data: bytes):
                rng = self.headers.get("Range")
                if rng and outer.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        return self._send(416, b"", "text/plain")
                    body = data[start:]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    body = data
                    self.send_response(200)
                # logged before the body goes out: the client cannot finish reading before the entry exists
                outer.log.append((self.path, rng, len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _send(self, code, body, ctype):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def payload(n: int, seed: int) -> bytes:
    out, block = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def release(name, host, path, data, **kw) -> wf.Release:
    return wf.Release(name, host, path, size=len(data), sha256=hashlib.sha256(data).hexdigest(), **kw)


def bases(server) -> dict[str, str]:
    return {"gdrive": server.url, "github": server.url, "pytorch": server.url}


def test_complete_fetch_through_the_drive_confirm_page_and_plain_http(server, tmp_path):
    g, a, lin = payload(3 * wf.CHUNK + 123, 1), payload(5000, 2), payload(6009, 3)
    server.drive["GID"], server.drive["AID"] = g, a
    server.files["/r/alex.pth"] = lin
    rels = [release("generator", "gdrive", "GID", g), release("directions", "gdrive", "AID", a),
            release("lpips_lin", "github", "/r/alex.pth", lin)]
    lines = []
    assert wf.fetch(tmp_path / "w", base_overrides=bases(server), progress=False, check_load=False,
                    releases=rels, log=lines.append)
    for rel, data in zip(rels, (g, a, lin)):
        f = tmp_path / "w" / VOX256[rel.name].filename
        assert f.read_bytes() == data
        assert not f.with_name(f.name + ".part").exists()
    assert sum("fetched" in ln and "sha256 ok" in ln for ln in lines) == 3
    # the Drive files came through the confirm form (first answer a page, then the file)
    assert any("confirm=t" in p and "uuid=u-123" in p for p, _, _ in server.log)
    # a second run downloads nothing: the files are there and checked
    n = len(server.log)
    lines.clear()
    assert wf.fetch(tmp_path / "w", base_overrides=bases(server), progress=False, check_load=False,
                    releases=rels, log=lines.append)
    assert len(server.log) == n and sum("present" in ln for ln in lines) == 3


@pytest.mark.parametrize("honour_range", [True, False])
def test_resumed_fetch_asks_only_for_the_rest(server, tmp_path, honour_range):
    data = payload(2 * wf.CHUNK + 777, 4)
    server.drive["EID"] = data
    server.honour_range = honour_range
    d = tmp_path / "w"
    d.mkdir()
    part = d / "e4e-voxceleb.pt.part"
    part.write_bytes(data[:wf.CHUNK + 5])           # left by an interrupted run
    rel = release("e4e", "gdrive", "EID", data)
    assert wf.fetch(d, base_overrides=bases(server), progress=False, check_load=False, releases=[rel],
                    log=lambda m: None)
    assert (d / "e4e-voxceleb.pt").read_bytes() == data and not part.exists()
    (path, rng, sent), = [e for e in server.log if "confirm=t" in e[0]]
    assert rng == f"bytes={wf.CHUNK + 5}-"
    # a server that ignores Range sends everything again; the .part is rewritten, not appended to
    assert sent == (len(data) - wf.CHUNK - 5 if honour_range else len(data))


def test_a_complete_part_is_checked_without_downloading(server, tmp_path):
    data = payload(4000, 5)
    server.drive["AID"] = data
    d = tmp_path / "w"
    d.mkdir()
    (d / "A_matrix.pt.part").write_bytes(data)
    assert wf.fetch(d, base_overrides=bases(server), progress=False, check_load=False,
                    releases=[release("directions", "gdrive", "AID", data)], log=lambda m: None)
    assert (d / "A_matrix.pt").read_bytes() == data and not server.log


def run_cli(*args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "engines.weights", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


RANGES_PATH = next(r for r in wf.RELEASES if r.name == "ranges").path


def test_wrong_hash_is_one_line_exit_2_and_no_file(server, tmp_path):
    server.files[RANGES_PATH] = payload(992, 6)      # the published size, other bytes
    d = tmp_path / "w"
    r = run_cli("fetch", "--dir", str(d), "--only", "ranges", "--quiet", "--base", f"github={server.url}")
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ranges_voxceleb.npy: sha256 ") and "removed" in err[0]
    assert "987f9a047eece535" in err[0]              # names the published hash
    assert not (d / "ranges_voxceleb.npy").exists() and not (d / "ranges_voxceleb.npy.part").exists()
    # the same through the environment variable instead of --base; a wrong size is caught too
    server.files[RANGES_PATH] = payload(991, 6)
    r = run_cli("fetch", "--dir", str(d), "--only", "ranges", "--quiet",
                env_extra={"FACEREENACT_FETCH_GITHUB": server.url})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "expected 992" in r.stderr
    assert list(d.iterdir()) == []


@pytest.mark.shared
@pytest.mark.skipif(not RANGES.is_file(), reason="needs ../shared/fixtures (the official ranges file)")
def test_cli_fetches_the_official_ranges_file_by_its_published_hash(server, tmp_path):
    server.files[RANGES_PATH] = RANGES.read_bytes()
    d = tmp_path / "w"
    r = run_cli("fetch", "--dir", str(d), "--only", "ranges", "--quiet", "--base", f"github={server.url}")
    assert r.returncode == 0, r.stderr
    assert "fetched  ranges_voxceleb.npy (sha256 ok; 54x2" in r.stdout
    assert (d / "ranges_voxceleb.npy").read_bytes() == RANGES.read_bytes()


def test_unpublished_hash_still_loads_the_file_before_the_rename(server, tmp_path):
    server.drive[next(r for r in wf.RELEASES if r.name == "directions").path] = b"<not a torch file>" * 50
    d = tmp_path / "w"
    r = run_cli("fetch", "--dir", str(d), "--only", "directions", "--quiet", "--base", f"gdrive={server.url}")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "A_matrix.pt" in r.stderr and "corrupt" in r.stderr and ".part" not in r.stderr
    assert list(d.iterdir()) == []


def test_drive_refusal_and_unreachable_server_are_one_line(server, tmp_path):
    gid = next(r for r in wf.RELEASES if r.name == "generator").path
    server.drive[gid] = b"x"
    server.quota.add(gid)
    r = run_cli("fetch", "--dir", str(tmp_path / "w"), "--only", "generator", "--quiet",
                "--base", f"gdrive={server.url}")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "quota" in r.stderr and f"https://drive.google.com/file/d/{gid}/view" in r.stderr
    r = run_cli("fetch", "--dir", str(tmp_path / "w"), "--only", "generator", "--quiet",
                "--base", "gdrive=http://127.0.0.1:9")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot reach" in r.stderr
    for bad in (["fetch"], ["fetch", "--dir", "x", "--only", "nope"], ["fetch", "--dir", "x", "--base", "gdrive"]):
        r = run_cli(*bad)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), (bad, r.stderr)


def test_mirror_serves_every_file_by_name(server, tmp_path):
    data = payload(3000, 7)
    server.files["/m/A_matrix.pt"] = data
    assert wf.fetch(tmp_path / "w", mirror=server.url + "/m", progress=False, check_load=False,
                    releases=[release("directions", "gdrive", "unused", data)], log=lambda m: None)
    assert (tmp_path / "w" / "A_matrix.pt").read_bytes() == data


def test_deca_needs_registration_steps_or_the_users_archive(server, tmp_path):
    deca = next(r for r in wf.RELEASES if r.name == "deca")
    d = tmp_path / "w"
    lines = []
    assert not wf.fetch(d, progress=False, releases=[deca], log=lines.append)
    text = "\n".join(lines)
    assert "https://flame.is.tue.mpg.de/" in text and "data.tar.gz" in text and "--deca-archive" in text
    assert f"https://drive.google.com/file/d/{deca.path}/view" in text and not server.log
    body = payload(2500, 8)
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        info = tarfile.TarInfo("data/deca_model.tar")
        info.size = len(body)
        t.addfile(info, io.BytesIO(body))
    assert wf.fetch(d, progress=False, check_load=False, releases=[deca], deca_archive=archive,
                    log=lines.append)
    assert (d / "deca_model.tar").read_bytes() == body
    # the real check loads it: an archive holding something else is refused and nothing is left
    (d / "deca_model.tar").unlink()
    with pytest.raises(UserError, match="deca_model.tar from .*data.tar.gz"):
        wf.fetch(d, progress=False, releases=[deca], deca_archive=archive, log=lines.append)
    assert list(d.iterdir()) == []
    # the CLI: exit 1 and the steps when only DECA is left
    r = run_cli("fetch", "--dir", str(d), "--only", "deca")
    assert r.returncode == 1 and "register at https://flame.is.tue.mpg.de/" in r.stdout


def test_every_missing_file_is_listed_at_once(tmp_path):
    (tmp_path / "A_matrix.pt").write_bytes(b"x")
    with pytest.raises(UserError) as e:
        require(tmp_path, ["generator"])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"missing 4 vox256 files in {tmp_path}")
    for f in ("stylegan-voxceleb.pt", "e4e-voxceleb.pt", "deca_model.tar", "ranges_voxceleb.npy"):
        assert f in msg
    assert "A_matrix.pt" not in msg and "engines.weights fetch --dir" in msg
    from engines.method.vox256 import load_vox256
    (tmp_path / "A_matrix.pt").unlink()
    with pytest.raises(UserError, match="missing 5 vox256 files"):
        load_vox256(tmp_path)


def test_the_release_table_matches_the_registry():
    assert {r.name for r in wf.RELEASES} == set(VOX256)
    for r in wf.RELEASES:
        assert r.host in wf.BASES
        assert r.sha256 is None or len(r.sha256) == 64
