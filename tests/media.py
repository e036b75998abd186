"""Test helpers: short driving clips cut from the bundled one, and a quick enrollment of the bundled
portrait (fast end-to-end runs)."""
import fractions
from pathlib import Path

import av

CLIP = Path(__file__).resolve().parents[1] / "assets" / "pexels_woman.mp4"
ASTRONAUT = Path(__file__).resolve().parents[1] / "assets" / "astronaut.png"


def quick_astronaut_pack(zoo, folder: Path, **enroll_kw) -> Path:
    """The bundled portrait enrolled with fewer steps than the default (the same code path; about the
    fewest tuning steps whose avatar passes enrollment's usability check), saved in `folder`;
    enroll_kw go to Enroller.enroll (e.g. tune_directions)."""
    from engines.core.photo import read_photo
    from streamer.avatar.enroll import Enroller
    pack = Enroller(zoo, progress=False, log=lambda m: None).enroll(
        read_photo(ASTRONAUT), ASTRONAUT.name, invert_steps=40, tune_steps=60, **enroll_kw)
    path = folder / "astro.avatar"
    pack.save(path)
    return path


def short_clip(out: Path, frames: int, src: Path = CLIP, size: tuple[int, int] | None = None) -> Path:
    """The first `frames` frames of `src` (resized to `size` = (w, h) if given), H.264 at 24 fps."""
    with av.open(str(src)) as i, av.open(str(out), "w") as o:
        st = o.add_stream("libx264", rate=24)
        st.pix_fmt = "yuv420p"
        for k, f in enumerate(i.decode(video=0)):
            if k == frames:
                break
            w, h = size or (f.width, f.height)
            if k == 0:
                st.width, st.height = w, h
            f = f.reformat(width=w, height=h, format="yuv420p")
            f.pts, f.time_base = k, fractions.Fraction(1, 24)
            for pkt in st.encode(f):
                o.mux(pkt)
        for pkt in st.encode():
            o.mux(pkt)
    return out
