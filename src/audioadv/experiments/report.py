"""`RUN_DIR/report.html`: a static page to listen to and look at a run's results.

It opens from disk and loads nothing from the network: audio files are referenced by relative paths inside the
run folder, images (and videos) are files written next to it (`RUN_DIR/report/`), and the style sheet is inline. Per job:
a summary of its metrics and resolved settings; for the examples whose audio was saved, players for the clean,
adversarial and perturbation-alone audio with a waveform and spectrogram image (for an audio-visual example,
videos with that audio as their sound instead, encoded into `RUN_DIR/report/` by `video.py`); a universal
perturbation's own player and spectrum; certification's certified-accuracy curve.
"""
from __future__ import annotations

import functools
import html
import json
import math
import warnings
from pathlib import Path
from urllib.parse import quote

import numpy as np

from . import tables as T
from . import video as V
from .runner import declared
from .store import Store

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2.2em;border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.ex{border:1px solid #e3e3e3;border-radius:6px;padding:.6em;margin:.8em 0}
.players{display:flex;gap:1em;flex-wrap:wrap}.players div{font-size:.85em}
audio{width:260px;display:block}video{width:256px;display:block;image-rendering:pixelated}
img{max-width:100%}code{font-size:.85em}.muted{color:#777;font-size:.85em}
.ok{color:#0a6d2c}.no{color:#a31515}
"""


def _esc(x) -> str:
    return html.escape("" if x is None else str(x))


def _src(path: str) -> str:
    return quote(path.replace("\\", "/"))


def _plot_example(clean: np.ndarray, adv: np.ndarray, sr: int, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    delta = adv - clean
    fig, ax = plt.subplots(1, 3, figsize=(11, 2.6), dpi=80)
    t = np.arange(len(clean)) / sr
    ax[0].plot(t, clean, lw=0.5, color="#555", label="clean")
    ax[0].plot(t, delta, lw=0.5, color="#d62728", label="perturbation")
    ax[0].set_xlabel("s")
    ax[0].legend(loc="upper right", fontsize=7)
    ax[0].set_title("waveform", fontsize=9)
    nfft = 512 if len(clean) >= 512 else max(16, 2 ** int(math.log2(max(len(clean), 16))))
    for a, x, name in ((ax[1], adv, "adversarial"), (ax[2], delta, "perturbation alone")):
        with np.errstate(divide="ignore"):
            a.specgram(x + 1e-9, NFFT=nfft, Fs=sr, noverlap=nfft // 2, cmap="magma", vmin=-160, vmax=-20)
        a.set_title(f"spectrogram: {name}", fontsize=9)
        a.set_xlabel("s")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _plot_lines(series: dict, path: Path, xlabel: str, ylabel: str, title: str, logx: bool = False) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3), dpi=80)
    for name, (x, y) in series.items():
        ax.plot(x, y, lw=1, label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if len(series) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _read(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf
    x, sr = sf.read(str(path), dtype="float32", always_2d=False)
    return x, sr


def _metrics_table(kind: str, rows: list[dict], job: dict) -> str:
    names = T.DEFAULT_VALUES.get(kind, ["n"])
    cells = "".join(f"<th>{_esc(n)}</th>" for n in names)
    vals = "".join(f"<td>{_esc(T.fmt(n, T.metric(n, [r for r in rows if '/' not in r['example_id']], job)))}</td>"
                   for n in names)
    return f"<table><tr>{cells}</tr><tr>{vals}</tr></table>"


NO_ENCODER = ("Videos of the audio-visual examples are not shown: no ffmpeg was found (install Debian's ffmpeg or "
              "<code>pip install imageio-ffmpeg</code> and write the report again); their audio players are.")


def _videos(root: Path, r: dict, img_dir: Path, enc: tuple) -> str:
    """Clean, adversarial and perturbation-alone videos of an AV example, each with that audio as its sound; a clip
    already encoded from the same files is reused."""
    npz = root / r["video_npz"]
    frames, fps, gain = V.clips(npz)
    stem = r["example_id"].replace("/", "_")
    amp = f"video &times;{gain:.3g} around grey" if gain else "video unchanged"
    out = ""
    for key, label in (("clean", "clean"), ("adv", "adversarial"), ("delta", f"perturbation alone ({amp})")):
        wav = root / r[f"{key}_wav"]
        path = img_dir / f"{stem}-{key}.{enc[1]}"
        if not V.fresh(path, npz, wav):
            V.encode(enc, frames[key], fps, wav, path)
        out += (f"<div>{label}<video controls preload='auto' src='{_src(str(path.relative_to(root)))}'>"
                f"</video></div>")
    return out


def _players(root: Path, r: dict, img_dir: Path, encoder) -> str:
    """The example's videos where it has saved frames and they can be encoded, else its audio players."""
    audio = "".join(f"<div>{label}<audio controls preload='metadata' src='{_src(r[key])}'></audio></div>"
                    for key, label in (("clean_wav", "clean"), ("adv_wav", "adversarial"),
                                       ("delta_wav", "perturbation alone")) if r.get(key))
    if not (r.get("video_npz") and (root / r["video_npz"]).is_file() and encoder()):
        return audio
    try:
        return _videos(root, r, img_dir, encoder())
    except (RuntimeError, OSError, KeyError, ValueError) as exc:     # one bad clip must not cost the whole page
        warnings.warn(f"no video for {r['example_id']}: {exc}", stacklevel=2)
        return f"{audio}<div class='no'>no video: {_esc(exc)}</div>"


def _example(root: Path, job: dict, r: dict, img_dir: Path, encoder) -> str:
    kind = job["kind"]
    if kind == "asr-attack":
        what = (f"original <q>{_esc(r.get('original'))}</q> &rarr; decoded <q>{_esc(r.get('decoded'))}</q> "
                f"(target <q>{_esc(r.get('target'))}</q>)")
    else:
        what = f"label <b>{_esc(r.get('label'))}</b>: clean {_esc(r.get('clean'))} &rarr; adversarial " \
               f"<b>{_esc(r.get('adversarial'))}</b>"
    ok = r.get("success")
    badge = "" if ok is None else f"<span class='{'ok' if ok else 'no'}'>{'fooled' if ok else 'not fooled'}</span>"
    snr = r.get("snr_db")
    snr_txt = f", SNR {snr:.1f} dB" if isinstance(snr, (int, float)) else ""
    players = _players(root, r, img_dir, encoder)
    img = ""
    if r.get("clean_wav") and r.get("adv_wav") and (root / r["clean_wav"]).is_file():
        clean, sr = _read(root / r["clean_wav"])
        adv, _ = _read(root / r["adv_wav"])
        png = img_dir / f"{r['example_id'].replace('/', '_')}.png"
        _plot_example(clean, adv, sr, png, r["example_id"])
        img = f"<img alt='waveform and spectrograms of {_esc(r['example_id'])}' src='{_src(str(png.relative_to(root)))}'>"
    return (f"<div class='ex'><div><code>{_esc(r['example_id'])}</code> {what} {badge}{_esc(snr_txt)}</div>"
            f"<div class='players'>{players}</div>{img}</div>")


def _universal_extra(root: Path, job: dict, rows: list[dict], img_dir: Path) -> str:
    s = job["summary"]
    out = ""
    if s.get("v_wav") and (root / s["v_wav"]).is_file():
        v, sr = _read(root / s["v_wav"])
        spec = 20 * np.log10(np.abs(np.fft.rfft(v)) + 1e-12)
        freqs = np.fft.rfftfreq(len(v), 1 / sr)
        png = img_dir / "v_spectrum.png"
        _plot_lines({"v": (freqs[1:], spec[1:])}, png, "Hz", "dB", "spectrum of the universal perturbation", logx=True)
        out += (f"<p>The universal perturbation v: <audio controls preload='metadata' src='{_src(s['v_wav'])}'></audio>"
                f"</p><img alt='spectrum of v' src='{_src(str(png.relative_to(root)))}'>")
    by_model: dict = {}
    for r in rows:
        by_model.setdefault(r.get("on_model"), []).append(r)
    if len(by_model) > 1:
        out += "<p>Success of v on each model:</p><table><tr><th>model</th><th>n</th><th>success_rate</th></tr>"
        for m, rs in by_model.items():
            out += (f"<tr><td>{_esc(m)}</td><td>{T.metric('n', rs)}</td>"
                    f"<td>{T.fmt('success_rate', T.metric('success_rate', rs))}</td></tr>")
        out += "</table>"
    return out


def _certify_extra(root: Path, rows: list[dict], img_dir: Path) -> str:
    if not rows:
        return ""
    top = max([r.get("radius") or 0.0 for r in rows] + [1e-3])
    radii = np.linspace(0, top * 1.05, 100)
    acc = [sum(bool(r.get("correct")) and (r.get("radius") or 0) >= x for r in rows) / len(rows) for x in radii]
    png = img_dir / "certified_accuracy.png"
    _plot_lines({"certified accuracy": (radii, acc)}, png, "l2 radius", "certified accuracy",
                "certified accuracy of the smoothed classifier")
    return f"<img alt='certified accuracy curve' src='{_src(str(png.relative_to(root)))}'>"


def write_report(run_dir, *, examples: int | None = None) -> Path:
    """Write RUN_DIR/report.html (and its images under RUN_DIR/report/); returns the page's path."""
    root = Path(run_dir)
    store = Store(root, create=False)
    name = root.name
    if examples is None:
        examples = 4
        for exp_name, exp in declared(root):
            name = exp_name
            examples = int(exp.get("report", {}).get("examples_per_job", examples))
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>audioadv report: {_esc(name)}</title>"
             f"<style>{CSS}</style></head><body><h1>audioadv report: {_esc(name)}</h1>"
             f"<p class='muted'>Run folder <code>{_esc(root.resolve())}</code>. Tables: "
             f"<code>audioadv table {_esc(root)}</code>.</p>"]
    encoder = functools.cache(V.encoder)       # looked for once, and only when an example has video
    has_video = False
    try:
        for job in store.jobs():
            rows = store.examples(job["job_id"])
            img_dir = root / "report" / job["job_id"]
            parts.append(f"<h2 id='{_esc(job['job_id'])}'>{_esc(job['name'])}</h2>"
                         f"<p class='muted'>{_esc(job['kind'])} job <code>{_esc(job['job_id'])}</code>, "
                         f"{_esc(job['status'])}, {len(rows)} examples</p>")
            if job["status"] == "failed":
                parts.append(f"<p class='no'>{_esc(job['summary'].get('error'))}</p>")
            parts.append(_metrics_table(job["kind"], rows, job))
            if job["kind"] == "universal":
                parts.append(_universal_extra(root, job, rows, img_dir))
            if job["kind"] == "certify":
                parts.append(_certify_extra(root, rows, img_dir))
            shown = [r for r in rows if r.get("adv_wav")][:examples]
            has_video |= any(r.get("video_npz") for r in shown)
            parts += [_example(root, job, r, img_dir, encoder) for r in shown]
            settings = json.dumps(job["settings"], indent=1, sort_keys=True)
            parts.append(f"<details><summary>resolved settings</summary><pre>{_esc(settings)}</pre></details>")
    finally:
        store.close()
    if has_video and encoder() is None:
        warnings.warn(NO_ENCODER.replace("<code>", "").replace("</code>", ""), stacklevel=2)
        parts.insert(1, f"<p class='no'>{NO_ENCODER}</p>")
    parts.append("</body></html>")
    page = root / "report.html"
    page.write_text("\n".join(parts))
    return page
