#!/usr/bin/env python
"""The WebRTC page end to end, as a user meets it, with the product itself (`run_stream.py --avatar
PHOTO --webrtc`, default zoo, CPU) and headless Chromium's fake camera playing the bundled clip:

  1. the server starts with a photo that was never enrolled (a fresh avatar cache): the page shows the
     avatar being prepared; "Send my camera" is clicked at once (screenshot 1);
  2. the call runs (screenshot 2); the session's fps is sampled from /status;
  3. a second photo (a frame of the bundled clip) is chosen on the page during the call: it enrolls
     while the call goes on (screenshot 3), the session's fps sampled all along; then the call switches
     to it (screenshot 4).

Writes the screenshots (1280x800 PNG) and numbers.json to --out. Needs chromium; takes a few minutes.
  python scripts/webrtc_page_demo.py --out docs/streaming_page
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import av

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.test_stream_browser import CHROMIUM, Chromium, make_y4m  # noqa: E402

CLIP = ROOT / "assets" / "pexels_woman.mp4"
ASTRONAUT = ROOT / "assets" / "astronaut.png"


def clip_frame(out: Path, index: int = 0) -> Path:
    with av.open(str(CLIP)) as c:
        for k, f in enumerate(c.decode(video=0)):
            if k == index:
                f.to_image().save(out, quality=92)
                return out
    raise SystemExit(f"{CLIP} has fewer than {index + 1} frames")


def enroll_children(server_pid: int) -> list[int]:
    """The server's enrollment processes (multiprocessing spawn children, not its resource tracker)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = Path(f"/proc/{d}/cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == server_pid and b"spawn_main" in cmd:
            out.append(int(d))
    return out


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def status(http, url) -> dict:
    async with http.get(f"{url}/status") as r:
        return await r.json()


def summary(samples: list[tuple[float, int]]) -> dict:
    """samples: (time, frames processed) -> mean fps and the worst 2-s window."""
    if len(samples) < 2:
        return {}
    (t0, n0), (t1, n1) = samples[0], samples[-1]
    windows = []
    for i, (ta, na) in enumerate(samples):
        for tb, nb in samples[i + 1:]:
            if tb - ta >= 2.0:
                windows.append((nb - na) / (tb - ta))
                break
    return {"seconds": round(t1 - t0, 1), "frames": n1 - n0, "fps_mean": round((n1 - n0) / (t1 - t0), 2),
            "fps_worst_2s": round(min(windows), 2) if windows else None,
            "share_of_2s_windows_at_20fps": round(sum(w >= 20 for w in windows) / len(windows), 3) if windows else None}


async def sample_until(http, url, done, period=0.5, limit_s=900.0) -> list[tuple[float, int]]:
    out = []
    t_end = time.monotonic() + limit_s
    while time.monotonic() < t_end:
        s = await status(http, url)
        peers = [p for p in s.get("peers", []) if p.get("mode") == "drive"]
        if peers:
            out.append((time.monotonic(), peers[0]["processed"]))
        if done(s):
            break
        await asyncio.sleep(period)
    return out


async def main(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="page-demo-"))
    photo = tmp / "astronaut.png"
    photo.write_bytes(ASTRONAUT.read_bytes())
    upload = clip_frame(tmp / "pexels_woman.jpg", args.frame)
    y4m = make_y4m(tmp / "camera.y4m", frames=240)
    cache = Path(args.cache) if args.cache else tmp / "cache"     # fresh: the photo was never enrolled
    env = dict(os.environ, FACEREENACT_CACHE=str(cache), GLOG_minloglevel="3", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "run_stream.py", "--avatar", str(photo), "--webrtc", "--port", str(args.port), "--quiet"]
    log = open(tmp / "server.log", "w")
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    numbers: dict = {"command": " ".join(cmd[1:]), "load_average_at_start": loadavg(), "cpus": os.cpu_count()}
    try:
        line = server.stdout.readline()
        m = re.search(r"open (http://\S+)", line)
        if not m:
            raise SystemExit(f"server did not start: {line!r} (log {tmp / 'server.log'})")
        url = m.group(1).rstrip("/")
        threading.Thread(target=lambda: [log.write(x) for x in server.stdout], daemon=True).start()
        t_start = time.monotonic()
        async with aiohttp.ClientSession() as http, Chromium(tmp, f"{url}/", y4m) as b:
            await b.wait_for(lambda s: s.get("polls", 0) >= 1 and s.get("cameras", 0) >= 1, timeout=60)
            await b.eval("document.getElementById('send').click()")
            await b.wait_for(lambda s: (s.get("avatar") or {}).get("progress", 0) >= args.shot_at, timeout=600)
            await b.screenshot(out / "1_preparing.png")
            s = await b.wait_for(lambda s: s.get("framesDecoded", 0) >= 30, timeout=900)
            numbers["first_click_to_frames"] = {"clicked_while": s.get("clickedWhile"), "error": s.get("error"),
                                                "video": [s.get("width"), s.get("height")],
                                                "seconds_from_start": round(time.monotonic() - t_start, 1)}
            await asyncio.sleep(args.warm)
            await b.screenshot(out / "2_call.png")
            numbers["before_upload"] = summary(await sample_until(
                http, url, lambda s, t=time.monotonic() + args.baseline: time.monotonic() > t))
            numbers["load_average_before_upload"] = loadavg()
            await b.choose_file("#avatar", upload)
            t_up = time.monotonic()
            shot = {"taken": False}

            def enrolled(s):
                a = next((a for a in s["avatars"] if a["name"] == upload.name), None)
                if a and not shot["taken"] and a["progress"] >= args.shot_at:
                    shot["due"] = True
                return a is not None and a["state"] in ("ready", "failed")

            samples, windows = [], {"running": [], "paused": []}
            finished = {"yes": False}

            def ended(s):
                finished["yes"] = finished["yes"] or enrolled(s)
                if args.sample_s and time.monotonic() - t_up > args.sample_s:
                    finished["cut"] = True
                return finished["yes"] or shot.get("due") or finished.get("cut")

            while not finished["yes"] and not finished.get("cut"):
                if args.ab and len(windows["paused"]) < args.ab_pairs:
                    # paired windows under the same outside load: the enrollment running, then stopped
                    for what in ("running", "paused"):
                        kids = enroll_children(server.pid)
                        if what == "paused":
                            for k in kids:
                                os.kill(k, signal.SIGSTOP)
                        try:
                            part = await sample_until(http, url, lambda s, t=time.monotonic() + args.ab:
                                                      ended(s) or time.monotonic() > t)
                        finally:
                            for k in kids:
                                os.kill(k, signal.SIGCONT)
                        samples += part if what == "running" else []
                        if kids and not finished["yes"]:
                            windows[what].append(summary(part))
                        if shot.pop("due", False):
                            await b.screenshot(out / "3_upload_enrolling.png")
                            shot["taken"] = True
                        if finished["yes"]:
                            break
                    continue
                samples += await sample_until(http, url, ended)
                if shot.pop("due", False):
                    await b.screenshot(out / "3_upload_enrolling.png")
                    shot["taken"] = True
            numbers["during_upload_enrollment"] = summary(samples)
            if args.ab:
                for what, ws in windows.items():
                    ws = [w for w in ws if w]
                    numbers[f"ab_windows_enrollment_{what}"] = {
                        "windows": len(ws), "fps_mean": round(sum(w["fps_mean"] for w in ws) / len(ws), 2) if ws else None,
                        "each": [w["fps_mean"] for w in ws]}
            numbers["load_average_after_enrollment"] = loadavg()
            if finished.get("cut"):
                numbers["measurement_cut_after_s"] = args.sample_s
                a = next(a for a in (await status(http, url))["avatars"] if a["name"] == upload.name)
                numbers["upload_when_cut"] = a
            else:
                final = await status(http, url)
                numbers["upload"] = next(a for a in final["avatars"] if a["name"] == upload.name)
                numbers["upload"]["seconds_from_choosing"] = round(time.monotonic() - t_up, 1)
                after = await b.wait_for(lambda s: any(m.startswith(f"avatar: {upload.name}") for m in s["messages"]),
                                         timeout=120)
                await asyncio.sleep(args.warm)
                await b.screenshot(out / "4_new_avatar.png")
                numbers["after_switch"] = summary(await sample_until(
                    http, url, lambda s, t=time.monotonic() + args.baseline: time.monotonic() > t))
                numbers["page_messages"] = after.get("messages", [])[-4:]
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    numbers["server_log_tail"] = (tmp / "server.log").read_text(errors="replace").splitlines()[-6:]
    (out / "numbers.json").write_text(json.dumps(numbers, indent=1) + "\n")
    return numbers


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="page-demo", help="folder for the screenshots and numbers.json")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--warm", type=float, default=6.0, help="seconds of call before each later screenshot")
    ap.add_argument("--baseline", type=float, default=20.0, help="seconds sampled before the upload and after the switch")
    ap.add_argument("--shot-at", type=float, default=0.3, help="progress at which the enrolling screenshots are taken")
    ap.add_argument("--cache", help="avatar cache to use (default: a fresh one, so the photo enrolls)")
    ap.add_argument("--frame", type=int, default=0, help="frame of the bundled clip uploaded as the second photo")
    ap.add_argument("--sample-s", type=float, default=0.0,
                    help="stop measuring this many seconds after the upload (0: when it is ready, then switch)")
    ap.add_argument("--ab-pairs", type=int, default=6, help="how many --ab window pairs (then it runs to the end)")
    ap.add_argument("--ab", type=float, default=0.0, metavar="S",
                    help="during the upload's enrollment, alternate S-second windows with the enrollment process "
                         "running and stopped (SIGSTOP), to compare the call's fps under the same outside load")
    a = ap.parse_args()
    if CHROMIUM is None:
        raise SystemExit("chromium not found (apt-get install chromium)")
    print(json.dumps(asyncio.run(main(a)), indent=1))
