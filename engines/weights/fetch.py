"""`python -m engines.weights fetch --dir DIR`: download the paper's release files for `--zoo vox256`.

The files come from where their authors publish them: the official repository's Google-Drive links
(StyleGAN2, e4e, A, IR-SE-50), its git tree (the p ranges), the LPIPS repository (alex.pth) and the
torchvision model zoo (AlexNet). DECA's `deca_model.tar` needs a registration: it is never downloaded
for the user; `deca_steps()` says what to do and `--deca-archive data.tar.gz` takes it out of the archive
the user downloaded after registering.

Every download resumes a `<name>.part` left by an interrupted run (HTTP Range), shows a progress bar,
checks the size and sha256 where they are published (and loads the file with the zoo's own checker,
`weights_only=True`), and only then renames the .part to its final name: a file under its final name
has passed every check. A failed check removes the download (it must not be resumed).

Google Drive is spoken to directly (urllib): the download endpoint answers large files with a "can't
scan for viruses" page whose form carries the confirm token; the form is read and submitted. No gdown:
it would add requests/beautifulsoup4/filelock to every user's install for about forty lines, and it
has its own resume and no size/hash checks before the final name.

Base URLs are overridable (tests point them at 127.0.0.1): `--base gdrive=URL` (also github, pytorch),
the environment variables FACEREENACT_FETCH_GDRIVE / _GITHUB / _PYTORCH, or `--mirror URL` for one
folder that holds every file under its final name.
"""
from __future__ import annotations

import hashlib
import html.parser
import os
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from engines.core.errors import UserError
from engines.weights.files import VOX256

REPO = "https://github.com/StelaBou/stylegan_directions_face_reenactment"
REPO_COMMIT = "98abb3b053e8ff1637c28ce6ba025e04d516efb9"

BASES = {
    "gdrive": "https://drive.usercontent.google.com",
    "github": "https://raw.githubusercontent.com",
    "pytorch": "https://download.pytorch.org",
}
CHUNK = 1 << 20
TIMEOUT_S = 60
USER_AGENT = "facereenact-weights-fetch/1"


@dataclass(frozen=True)
class Release:
    name: str                          # engines.weights.files.VOX256 id; saved under that entry's filename
    host: str                          # key of BASES
    path: str                          # gdrive: the file id; other hosts: the URL path
    size: int | None = None            # bytes, where known
    sha256: str | None = None          # full hex digest, where known
    sha256_prefix: str | None = None   # where only a prefix is published (torchvision's file names)
    registration: bool = False         # never downloaded for the user (licence needs a registration)

    def page(self) -> str:
        """Where a person finds the file (the Drive page, or the URL itself)."""
        if self.host == "gdrive":
            return f"https://drive.google.com/file/d/{self.path}/view"
        return BASES[self.host] + self.path


RELEASES: list[Release] = [
    Release("generator", "gdrive", "1cBwIFwq6cYIA5iR8tEvj6BIL7Ji7azIH"),
    Release("e4e", "gdrive", "1TRATaREBi4VCMITUZV0ZO2XFU3YZKGlQ"),
    Release("directions", "gdrive", "11aNalhBnPREFQT9i9wmQE0-fkQac4SzQ"),
    Release("deca", "gdrive", "1BHVJAEXscaXMj_p2rOsHYF_vaRRRHQbA", registration=True),   # data.tar.gz
    Release("ranges", "github",
            f"/StelaBou/stylegan_directions_face_reenactment/{REPO_COMMIT}/libs/configs/ranges_voxceleb.npy",
            size=992, sha256="987f9a047eece5356acd2963c7e9b25abd74726dbf92aee0dd6bb301687b469f"),
    Release("arcface", "gdrive", "1s5pWag4AwqQyhue6HH-M_f2WDV4IVZEl"),
    # the file has not changed since v0.1 (2018); the hash pins it whatever the branch holds
    Release("lpips_lin", "github", "/richzhang/PerceptualSimilarity/master/lpips/weights/v0.1/alex.pth",
            size=6009, sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"),
    Release("alexnet", "pytorch", "/models/alexnet-owt-7be5be79.pth", sha256_prefix="7be5be79"),
]


class FetchError(UserError):
    """A download or check failed (one line; the caller exits 2)."""


def bases(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """BASES, then FACEREENACT_FETCH_<HOST> from the environment, then explicit overrides."""
    out = dict(BASES)
    for host in BASES:
        env = os.environ.get(f"FACEREENACT_FETCH_{host.upper()}")
        if env:
            out[host] = env
    for host, url in (overrides or {}).items():
        if host not in BASES:
            raise UserError(f"unknown host '{host}' in --base (one of {', '.join(BASES)})")
        out[host] = url
    return {h: u.rstrip("/") for h, u in out.items()}


def deca_steps(weights_dir: Path) -> list[str]:
    """What a user does to get deca_model.tar (the DECA/FLAME licence needs a registration)."""
    deca = next(r for r in RELEASES if r.name == "deca")
    return [
        "deca_model.tar (DECA coarse encoder) needs a registration; fetch does not download it for you:",
        "  1. register at https://flame.is.tue.mpg.de/ (and https://deca.is.tue.mpg.de/) and accept the "
        "FLAME/DECA licence (non-commercial scientific research only)",
        f"  2. download data.tar.gz, the paper's authors' DECA data, from {deca.page()}",
        f"  3. python -m engines.weights fetch --dir {weights_dir} --deca-archive PATH/TO/data.tar.gz",
        "     (takes data/deca_model.tar out of the archive; by hand: tar -xzf data.tar.gz and copy "
        f"data/deca_model.tar into {weights_dir})",
    ]


# -- checks ---------------------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_bytes(path: Path, rel: Release, filename: str) -> str:
    """Size and hash against what is published; returns a note on what was checked, raises FetchError."""
    size = path.stat().st_size
    if rel.size is not None and size != rel.size:
        raise FetchError(f"{filename}: {size} bytes, expected {rel.size}")
    digest = sha256_of(path)
    if rel.sha256 is not None and digest != rel.sha256:
        raise FetchError(f"{filename}: sha256 {digest[:16]}... does not match the published {rel.sha256[:16]}...")
    if rel.sha256_prefix is not None and not digest.startswith(rel.sha256_prefix):
        raise FetchError(f"{filename}: sha256 {digest[:16]}... does not start with the published "
                         f"{rel.sha256_prefix}")
    if rel.sha256:
        return "sha256 ok"
    if rel.sha256_prefix:
        return f"sha256 prefix {rel.sha256_prefix} ok"
    return f"sha256 {digest[:12]}... (none published)"


# -- HTTP -----------------------------------------------------------------------------------------

def _open(url: str, start: int = 0):
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)


class _DriveForm(html.parser.HTMLParser):
    """The 'download anyway' form of Drive's virus-scan page: its action and hidden inputs."""

    def __init__(self):
        super().__init__()
        self.action, self.fields, self.link, self._in_form = None, {}, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and (a.get("id") == "download-form" or self.action is None):
            self.action, self._in_form = a.get("action") or "", True
        elif tag == "input" and self._in_form and a.get("name"):
            self.fields[a["name"]] = a.get("value") or ""
        elif tag == "a" and "confirm=" in (a.get("href") or "") and self.link is None:
            self.link = a["href"]          # the older page: a link carrying &confirm=TOKEN

    def handle_endtag(self, tag):
        if tag == "form":
            self._in_form = False


def _drive_confirm_url(page: str, base: str) -> str | None:
    form = _DriveForm()
    form.feed(page)
    if form.action is not None and "id" in form.fields:
        return urllib.parse.urljoin(base + "/", form.action) + "?" + urllib.parse.urlencode(form.fields)
    if form.link:
        return urllib.parse.urljoin(base + "/", form.link)
    return None


def _drive_refusal(page: str, rel: Release, filename: str) -> str:
    low = page.lower()
    if "quota" in low or "too many users" in low:
        why = "Google Drive refuses it for now (the file's download quota is exceeded); try again in a day"
    elif "accounts.google.com" in low or "sign in" in low:
        why = "Google Drive asks for a sign-in (the file is not public any more)"
    else:
        why = "Google Drive answered with a page instead of the file"
    return f"{filename}: {why}, or download it in a browser from {rel.page()} and save it as {filename}"


def _is_html(resp) -> bool:
    return (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower() == "text/html"


def open_release(rel: Release, filename: str, base: dict[str, str], mirror: str | None, start: int):
    """An open response for the file's bytes from `start` (the server may ignore the Range)."""
    if mirror:
        return _open(f"{mirror.rstrip('/')}/{urllib.parse.quote(filename)}", start)
    if rel.host != "gdrive":
        return _open(base[rel.host] + rel.path, start)
    url = f"{base['gdrive']}/download?" + urllib.parse.urlencode({"id": rel.path, "export": "download"})
    for _ in range(3):                     # file, or a confirm page (at most twice)
        resp = _open(url, start)
        if not _is_html(resp):
            return resp
        page = resp.read(1 << 20).decode("utf-8", "replace")
        resp.close()
        url = _drive_confirm_url(page, base["gdrive"])
        if url is None:
            raise FetchError(_drive_refusal(page, rel, filename))
    raise FetchError(_drive_refusal("", rel, filename))


def _total(resp, start: int) -> int | None:
    """The file's full size from Content-Range (206) or Content-Length (200)."""
    cr = resp.headers.get("Content-Range") or ""
    if "/" in cr and cr.rsplit("/", 1)[1].strip().isdigit():
        return int(cr.rsplit("/", 1)[1])
    n = resp.headers.get("Content-Length")
    return start + int(n) if n and n.isdigit() else None


def download(rel: Release, dest: Path, base: dict[str, str], mirror: str | None = None,
             progress: bool = True, validate=None, log=print) -> str:
    """Fetch one release to `dest` via `dest.part`; returns what was checked. FetchError on failure."""
    from tqdm import tqdm
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    if rel.size is not None and start > rel.size:
        part.unlink()
        start = 0
    if start and start == rel.size:
        resp = None                        # a complete .part from an interrupted check: just check it
    else:
        try:
            resp = open_release(rel, dest.name, base, mirror, start)
        except urllib.error.HTTPError as e:
            if e.code == 416 and start:    # nothing after `start`: the .part is already whole
                resp = None
            else:
                raise FetchError(f"{dest.name}: HTTP {e.code} {e.reason} from {e.url}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise FetchError(f"{dest.name}: cannot reach the server ({reason}); run the same command again "
                             "to resume") from None
    if resp is not None:
        with resp:
            resumed = start > 0 and resp.status == 206 and \
                (resp.headers.get("Content-Range") or "").startswith(f"bytes {start}-")
            if start and not resumed:
                start = 0                  # the server sent the whole file again
            total = _total(resp, start)
            if rel.size is not None and total is not None and total != rel.size:
                raise FetchError(f"{dest.name}: the server offers {total} bytes, expected {rel.size}")
            if start:
                log(f"  resuming {dest.name} at {start} bytes")
            try:
                with open(part, "ab" if start else "wb") as f, \
                        tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                             desc=dest.name, disable=not progress, leave=False) as bar:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
            except (OSError, urllib.error.URLError) as e:
                raise FetchError(f"{dest.name}: download interrupted ({getattr(e, 'reason', None) or e}); "
                                 "run the same command again to resume") from None
        got = part.stat().st_size
        if total is not None and got != total:
            raise FetchError(f"{dest.name}: the connection ended at {got} of {total} bytes; run the same "
                             "command again to resume")
    try:
        note = check_bytes(part, rel, dest.name)
        if validate is not None:
            note += "; " + validate(part)
    except UserError as e:
        part.unlink(missing_ok=True)       # a wrong file must not be resumed
        msg = str(e).replace(str(part), dest.name)
        raise FetchError(f"{msg}; the download was removed") from None
    os.replace(part, dest)
    return note


def extract_deca(archive: Path, dest: Path, validate=None) -> None:
    """Copy the member named deca_model.tar out of the user's data.tar.gz into dest (via dest.part,
    checked by `validate` before the rename)."""
    if not archive.is_file():
        raise UserError(f"DECA archive not found: {archive}")
    part = dest.with_name(dest.name + ".part")
    try:
        with tarfile.open(archive, "r:*") as tar:
            member = next((m for m in tar if m.isfile() and Path(m.name).name == dest.name), None)
            if member is None:
                raise UserError(f"{archive} holds no {dest.name}; is it the DECA data.tar.gz?")
            src = tar.extractfile(member)
            with open(part, "wb") as f:
                while chunk := src.read(CHUNK):
                    f.write(chunk)
    except (tarfile.TarError, OSError, EOFError) as e:
        part.unlink(missing_ok=True)
        raise UserError(f"{archive}: cannot read it as a tar archive ({e})") from None
    if validate is not None:
        try:
            validate(part)
        except UserError as e:
            part.unlink(missing_ok=True)
            raise UserError(str(e).replace(str(part), f"{dest.name} from {archive}")) from None
    os.replace(part, dest)


def fetch(weights_dir: Path, roles=("inference", "training"), base_overrides=None, mirror: str | None = None,
          deca_archive: Path | None = None, progress: bool = True, check_load: bool = True, log=print,
          releases: list[Release] | None = None, only=None) -> bool:
    """Download every missing release of `roles` into weights_dir. True when all of them (DECA
    included) are in place; FetchError on the first failure."""
    base = bases(base_overrides)
    weights_dir.mkdir(parents=True, exist_ok=True)
    complete = True
    for rel in releases if releases is not None else RELEASES:
        w = VOX256[rel.name]
        if w.role not in roles or (only and rel.name not in only):
            continue
        dest = weights_dir / w.filename
        validate = (lambda p, w=w: w.check(p)[0]) if check_load else None
        if rel.registration:
            if not dest.is_file() and deca_archive is not None:
                extract_deca(Path(deca_archive), dest, validate)
                log(f"  extracted {w.filename} from {deca_archive}")
            if dest.is_file():
                log(f"  present  {w.filename}")
            else:
                complete = False
                for line in deca_steps(weights_dir):
                    log("  " + line)
            continue
        if dest.is_file():
            note = "kept"
            if rel.sha256 or rel.sha256_prefix:
                try:
                    note = check_bytes(dest, rel, w.filename)
                except FetchError as e:
                    raise FetchError(f"{e} (in {weights_dir}: delete it and run fetch again)") from None
            log(f"  present  {w.filename} ({note})")
            continue
        note = download(rel, dest, base, mirror, progress, validate, log)
        log(f"  fetched  {w.filename} ({note})")
    return complete
