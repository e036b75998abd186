"""Test helper: short driving clips cut from the bundled one (fast end-to-end runs)."""
from pathlib import Path

import av

CLIP = Path(__file__).resolve().parents[1] / "assets" / "pexels_woman.mp4"


def short_clip(out: Path, frames: int, src: Path = CLIP) -> Path:
    """The first `frames` frames of `src`, re-encoded as H.264 at 24 fps."""
    with av.open(str(src)) as i, av.open(str(out), "w") as o:
        st = o.add_stream("libx264", rate=24)
        st.pix_fmt = "yuv420p"
        for k, f in enumerate(i.decode(video=0)):
            if k == frames:
                break
            if k == 0:
                st.width, st.height = f.width, f.height
            for pkt in st.encode(av.VideoFrame.from_ndarray(f.to_ndarray(format="rgb24"), format="rgb24")):
                o.mux(pkt)
        for pkt in st.encode():
            o.mux(pkt)
    return out
