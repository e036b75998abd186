"""The vox256 weight files from the command line: what is there, and fetching what is not.

    python -m engines.weights status --dir DIR
    python -m engines.weights fetch --dir DIR

`status` prints present / missing / invalid for every file (exit 0 when everything inference needs is
present and valid, 1 otherwise, 2 for a bad command line). `fetch` downloads the files from where the
paper's authors publish them, when you ask it to (engines.weights.fetch; nothing else in the project
downloads). docs/weights.md has the details and licences.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engines.core.errors import UserError, main_guard
from engines.weights.fetch import fetch
from engines.weights.files import VOX256, consistency, status


def _parse_bases(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        host, sep, url = item.partition("=")
        if not sep or not url:
            raise UserError(f"--base needs HOST=URL, got '{item}'")
        out[host] = url
    return out


def _fetch(args) -> int:
    d = Path(args.dir)
    if d.exists() and not d.is_dir():
        raise UserError(f"{d} exists and is not a folder")
    roles = ("inference",) if args.inference_only else ("inference", "training")
    print(f"fetching vox256 weights into {d}:")
    complete = fetch(d, roles, _parse_bases(args.base), args.mirror, args.deca_archive,
                     progress=not args.quiet, only=args.only)
    if complete:
        print(f"done; check them with: python -m engines.weights status --dir {d}")
        return 0
    print("not complete yet: deca_model.tar needs the steps above (the other files are in place)")
    return 1


class _OneLineParser(argparse.ArgumentParser):
    """Flag errors as one `error: ...` line and exit 2 (subcommand parsers inherit it)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


@main_guard
def main(argv=None) -> int:
    ap = _OneLineParser(prog="python -m engines.weights", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("status", help="check every vox256 file in a folder")
    st.add_argument("--dir", required=True, help="weights folder")
    st.add_argument("--inference-only", action="store_true", help="skip the training-only files")
    fe = sub.add_parser("fetch", help="download the vox256 files from where their authors publish them",
                        description="Download the paper's release files (resumable, size/sha256-checked, "
                                    "written as NAME.part then renamed). Exit 0: every file in place; 1: only "
                                    "deca_model.tar is left (it needs a registration, the steps are printed); "
                                    "2: a download or check failed (one line).")
    fe.add_argument("--dir", required=True, help="weights folder (created if needed)")
    fe.add_argument("--inference-only", action="store_true",
                    help="skip the training-only files (ArcFace, LPIPS heads, AlexNet)")
    fe.add_argument("--only", action="append", choices=list(VOX256), metavar="NAME",
                    help=f"fetch only this file (repeatable): {', '.join(VOX256)}")
    fe.add_argument("--deca-archive", type=Path, metavar="DATA_TAR_GZ",
                    help="the DECA data.tar.gz you downloaded after registering: deca_model.tar is taken from it")
    fe.add_argument("--mirror", metavar="URL",
                    help="fetch every file as URL/<file name> instead (a folder holding the same files)")
    fe.add_argument("--base", action="append", default=[], metavar="HOST=URL",
                    help="replace one host's base URL: gdrive, github or pytorch (also FACEREENACT_FETCH_<HOST>)")
    fe.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    if args.cmd == "fetch":
        return _fetch(args)
    d = Path(args.dir)
    if not d.is_dir():
        raise UserError(f"weights folder not found: {d}")
    roles = ("inference",) if args.inference_only else ("inference", "training")
    rows = status(d, roles)
    width = max(len(s.file.filename) for s in rows)
    print(f"vox256 weights in {d}:")
    for s in rows:
        print(f"  {s.state:<8} {s.file.filename:<{width}}  [{s.file.role}] {s.file.what}: {s.detail}")
    issues = consistency(rows)
    for msg in issues:
        print(f"  mismatch {msg}")
    ready = all(s.state == "present" for s in rows if s.file.role == "inference") and not issues
    print("ready for --zoo vox256" if ready else "not ready for --zoo vox256")
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
