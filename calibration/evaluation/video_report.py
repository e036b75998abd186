"""The Markdown report and figures of calibration.evaluation.evaluate_video: a table shaped like the paper's
Table 1, a per-pair table, driver-vs-output curves and frame strips."""
from __future__ import annotations

from pathlib import Path

import numpy as np

CROP = 256  # the published face size; NME, LPIPS and strips use this frame

# REFERENCE §2: the paper's Table 1 (VoxCeleb1, vox256 models). Its pose/expression errors are in
# DECA units, not comparable with the MediaPipe units here; CSIM there is ArcFace, here SFace.
PAPER = {"self": {"csim": 0.66, "lpips": 0.11, "fid": 35.0, "nme": 14.1, "pose": 1.1, "exp": 0.8},
         "cross": {"csim": 0.63, "pose": 1.4, "exp": 1.2}}


def fmt(v, digits=2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def table1(results: dict, modes: list[str]) -> str:
    label = {"relative": "default zoo, relative motion (product default)",
             "absolute": "default zoo, absolute motion (paper's dp)",
             "static": "no motion (avatar held still)"}
    lines = ["| setting | method | CSIM | CSIM (target) | LPIPS | FID | NME | NME (aligned) | pose err (°) | "
             "exp err | frames | output face |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind in ("self", "cross"):
        p = PAPER[kind]
        lines.append(f"| {kind} | paper, vox256 (VoxCeleb1, Table 1) | {fmt(p.get('csim'))} | – | "
                     f"{fmt(p.get('lpips'))} | {fmt(p.get('fid'), 1)} | {fmt(p.get('nme'), 1)} | – | "
                     f"{fmt(p.get('pose'), 1)} | {fmt(p.get('exp'), 1)} | – | – |")
        for mode in [*modes, "static"]:
            r = results["summary"].get(kind, {}).get(mode)
            if not r:
                continue
            lines.append(f"| {kind} | {label[mode]} | {fmt(r['csim'], 3)} | {fmt(r['csim_target'], 3)} | "
                         f"{fmt(r['lpips'], 3)} | {fmt(r['fid'], 1)} | {fmt(r['nme'], 1)} | "
                         f"{fmt(r['nme_aligned'], 1)} | {fmt(r['pose'])} | {fmt(r['exp'], 3)} | {r['frames']} | "
                         f"{fmt(r['output_face_rate'], 3)} |")
    return "\n".join(lines)


def pair_table(results: dict) -> str:
    lines = ["| source | driver | mode | CSIM | NME | pose err (°) | yaw | pitch | roll | exp err | jawOpen | "
             "r(yaw) | r(pitch) | r(jawOpen) | frames | output face |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["pairs"]:
        s = r["summary"]
        lines.append(f"| {r['source']} | {r['driver']} | {r['mode']} | {fmt(s['csim'], 3)} | {fmt(s['nme'], 1)} | "
                     f"{fmt(s['pose'])} | {fmt(s.get('err_yaw'))} | {fmt(s.get('err_pitch'))} | "
                     f"{fmt(s.get('err_roll'))} | {fmt(s['exp'], 3)} | {fmt(s.get('err_jawOpen'), 3)} | "
                     f"{fmt(s.get('r_yaw'))} | {fmt(s.get('r_pitch'))} | {fmt(s.get('r_jawOpen'))} | "
                     f"{s['frames']} | {fmt(s['output_face_rate'], 3)} |")
    return "\n".join(lines)


def observations(results: dict) -> list[str]:
    """Plain comparisons read off the numbers: driven vs held still, and how well outputs follow."""
    out = []
    for kind in ("self", "cross"):
        rows = results["summary"].get(kind, {})
        if "relative" not in rows or "static" not in rows:
            continue
        r, s = rows["relative"], rows["static"]
        rel = [p for p in results["pairs"] if p["kind"] == kind and p["mode"] == "relative"]
        still = {(p["source"], p["driver"]): p["summary"] for p in results["pairs"]
                 if p["kind"] == kind and p["mode"] == "static"}
        wins = sum(p["summary"]["pose"] is not None and still[(p["source"], p["driver"])]["pose"] is not None
                   and p["summary"]["pose"] < still[(p["source"], p["driver"])]["pose"] for p in rel)
        corr = {n: [p["summary"].get(f"r_{n}") for p in rel if p["summary"].get(f"r_{n}") is not None]
                for n in ("yaw", "pitch", "jawOpen")}
        med = ", ".join(f"{n} {np.median(v):.2f}" for n, v in corr.items() if v)
        out.append(f"- {kind}-reenactment, relative motion vs the avatar held still: pose error {fmt(r['pose'])}° vs "
                   f"{fmt(s['pose'])}°, expression error {fmt(r['exp'], 3)} vs {fmt(s['exp'], 3)}, CSIM "
                   f"{fmt(r['csim'], 3)} vs {fmt(s['csim'], 3)}; driving beats holding still on pose error in "
                   f"{wins} of {len(rel)} pairs; median correlation of output with target over the pairs: {med or '–'}.")
    # holding still errs by exactly the driver's own motion (cross, relative target): a strong baseline
    # when the driver hardly moves, so compare per driver
    per = {}
    for p in results["pairs"]:
        if p["kind"] == "cross" and p["summary"]["pose"] is not None:
            per.setdefault(p["driver"], {}).setdefault(p["mode"], []).append(p["summary"]["pose"])
    parts = [f"`{d}` {np.mean(m['static']):.2f}° → {np.mean(m['relative']):.2f}°" for d, m in per.items()
             if "static" in m and "relative" in m]
    if parts:
        out.append("- Per driver (cross, pose error held still → driven with relative motion; the first number is the "
                   "driver's own mean head motion since its first frame): " + "; ".join(parts) + ". Driving pays off "
                   "when the driver moves more than the output's own pose error.")
    return out


def plot_series(sess, names: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = np.array([s[0] for s in sess.tally.series])
    tgt = np.array([s[1] for s in sess.tally.series])
    out = np.array([s[2] for s in sess.tally.series])
    keys = ["yaw", "pitch", "jawOpen"]
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 5.4), sharex=True)
    for ax, k in zip(axes, keys):
        i = names.index(k)
        ax.plot(t, tgt[:, i], color="#444444", lw=1.2, label="driver (target)")
        ax.plot(t, out[:, i], color="#cc3311", lw=1.2, label="output")
        ax.set_ylabel(k + (" (°)" if i < 3 else ""), fontsize=9)
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("time (s)", fontsize=9)
    fig.suptitle(f"{sess.source.clip} -> {sess.driver} ({sess.mode} motion)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_strip(sess, path: Path) -> None:
    """Top row: driver (target crop for self-reenactment), bottom row: output."""
    from PIL import Image
    if not sess.strip:
        return
    h = CROP // 2
    tops = [np.asarray(Image.fromarray(a).resize((max(1, round(a.shape[1] * h / a.shape[0])), h), Image.BILINEAR))
            for a, _ in sess.strip]
    bots = [np.asarray(Image.fromarray(b).resize((h, h), Image.BICUBIC)) for _, b in sess.strip]
    w = max(sum(x.shape[1] for x in tops), h * len(bots))
    canvas = np.full((2 * h, w, 3), 255, np.uint8)
    x = 0
    for a in tops:
        canvas[:h, x:x + a.shape[1]] = a
        x += a.shape[1]
    for k, b in enumerate(bots):
        canvas[h:, k * h:(k + 1) * h] = b
    Image.fromarray(canvas).save(path)


def write_report(results: dict, path: Path, figures: list[tuple[str, Path]]) -> None:
    meta = results["meta"]
    parts = [
        "# Video evaluation (the paper's Table 1 protocol)", "",
        "Generated by `calibration/evaluation/evaluate_video.py`; the protocol and every metric's definition are in "
        "that module's docstring (summarised below). Command:", "",
        "```sh", meta["command"], "```", "",
        f"Zoo `{meta['zoo']}`, direction matrix sha256 `{meta['directions_sha256'][:16]}…`, clips: "
        + ", ".join(f"`{c}`" for c in meta["clips"]) + f"; enrollment {meta['enroll']}; "
        f"{meta['seconds']:.0f} s on this machine.", "",
        "## Table 1 shape", "",
        table1(results, meta["modes"]), "",
        "Self rows pool every (clip, later frame) pair; cross rows pool every ordered pair of different clips "
        "(frame-weighted means). The paper's row is for its VoxCeleb1 models and instruments (ArcFace CSIM, "
        "DECA pose/expression units): only the shape of the table is comparable, not the numbers. "
        + ("" if meta["lpips"] else "LPIPS: no LPIPS weights given (`--weights DIR` with alex.pth + "
           "alexnet-owt-7be5be79.pth), skipped. ")
        + ("" if meta["fid"] else "FID: no feature network given (`--fid-features inception.onnx`), skipped. "),
        "",
        "Definitions: CSIM = SFace cosine of output and source frame (CSIM (target): with the target frame); "
        "NME = mean distance of 68 landmarks, output vs target (target put into the output's frame by the "
        "avatar's crop box), in % of the target's outer-eye-corner distance; NME (aligned) removes each set's "
        "centroid; pose err = mean |Δyaw|, |Δpitch|, |Δroll| in degrees; exp err = mean |Δ| of the 10 "
        "expression blendshapes (0..1). Self: vs the target frame. Cross, relative: vs p(avatar) + "
        "(p_driver(t) − p_driver(first face)); cross, absolute: vs p_driver(t). Output face = fraction of "
        "measured frames whose output the reader still finds a face in. The paper names NME of the facial "
        "landmarks between reenacted and target images; its normaliser could not be confirmed from the "
        "sources at hand, so the common 300-W convention (outer eye corners) is used and stated. All readings: "
        "MediaPipe FaceLandmarker runtime in image mode; identity: SFace (the paper: ArcFace). The engine runs "
        "as in the product (video-mode tracking, One-Euro smoothing" + ("" if meta.get("smooth", True) else
                                                                      " off") +
        ") on the clip's own clock.", "",
        "## Observations", "", *observations(results), "",
        "## Per pair", "", pair_table(results), "",
        "r(·): Pearson correlation over the frames of the output's and the target's yaw, pitch and jawOpen "
        "(– where the output does not move).", ""]
    if figures:
        parts += ["## Figures", ""]
        if meta.get("figure_clips"):
            parts += [f"Only clips whose name contains `{meta['figure_clips']}` get figures (source and driver): "
                      "the other clips' licences allow testing, not publishing frames or faces made from them.", ""]
        for title, fig in figures:
            rel = Path(fig).resolve().relative_to(path.resolve().parent) if Path(fig).resolve().is_relative_to(
                path.resolve().parent) else Path(fig)
            parts += [f"**{title}**", "", f"![{title}]({rel.as_posix()})", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
