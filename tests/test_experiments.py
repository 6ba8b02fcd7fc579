"""`audioadv run / table / report`: resume after a kill, new jobs for changed settings, validation messages,
tables in every format, and the HTML report in a real browser."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audioadv.cli import main
from audioadv.experiments import Store, load, tables_text
from audioadv.experiments.spec import SpecError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.toml"
VOLATILE = {"seconds", "cpu_seconds", "time"}          # wall-clock fields: the only ones allowed to differ between runs


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "audioadv.cli", *args]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def _rows(run_dir: Path) -> dict:
    """{(job settings as JSON, example_id): fields without wall-clock times} of a run folder."""
    db = sqlite3.connect(run_dir / "results.sqlite")
    out = {}
    for settings, eid, data in db.execute("SELECT j.settings, e.example_id, e.data FROM examples e "
                                          "JOIN jobs j USING (job_id)"):
        out[(settings, eid)] = {k: v for k, v in json.loads(data).items() if k not in VOLATILE}
    db.close()
    return out


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    proc = subprocess.run(_cli("run", str(SMOKE), "--out", str(out), "--quiet", "--threads", "1"),
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_smoke_killed_and_resumed_equals_uninterrupted(smoke_run, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli("run", str(SMOKE), "--out", str(out), "--quiet", "--threads", "1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), start_new_session=True)
    db_path = out / "results.sqlite"
    deadline = time.time() + 400
    killed_at = None
    while time.time() < deadline and proc.poll() is None:   # kill once certification has committed examples
        if db_path.exists():
            try:
                db = sqlite3.connect(db_path, timeout=1)
                n = db.execute("SELECT count(*) FROM examples e JOIN jobs j USING (job_id) "
                               "WHERE j.kind='certify'").fetchone()[0]
                db.close()
            except sqlite3.Error:
                n = 0
            if n >= 2:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = n
                break
        time.sleep(0.05)
    proc.wait()
    assert killed_at is not None, "the run ended before it could be killed"
    partial = _rows(out)
    full = _rows(smoke_run)
    assert len(partial) < len(full)
    assert {k: v for k, v in full.items() if k in partial} == partial        # what was committed is final
    again = subprocess.run(_cli("run", str(SMOKE), "--out", str(out), "--quiet"), capture_output=True, text=True,
                           env=_env(), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = _rows(out)
    assert resumed.keys() == full.keys()                                      # nothing lost, nothing twice
    assert resumed == full                                                    # the same numbers
    store = Store(out, create=False)
    assert {j["status"] for j in store.jobs()} == {"done"}
    store.close()


def test_changed_parameter_is_a_new_job_and_unchanged_resumes(smoke_run, tmp_path):
    text = SMOKE.read_text().replace("max_iter = 10", "max_iter = 11")
    changed = tmp_path / "changed.toml"
    changed.write_text(text)
    before = {j["job_id"]: j for j in Store(smoke_run, create=False).jobs()}
    exp_old, exp_new = load(SMOKE), load(changed)
    from audioadv.experiments.store import job_id
    ids_old = {job_id(j.kind, j.settings) for j in exp_old.jobs}
    ids_new = {job_id(j.kind, j.settings) for j in exp_new.jobs}
    assert ids_old <= set(before)
    assert len(ids_new - ids_old) == 1                    # the universal job, and only it, is new
    new = (ids_new - ids_old).pop()
    assert [j.settings["max_iter"] for j in exp_new.jobs if job_id(j.kind, j.settings) == new] == [11]
    # an unchanged file finds every job done: nothing is recomputed
    proc = subprocess.run(_cli("run", str(SMOKE), "--out", str(smoke_run)), capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("done earlier") == len(exp_old.jobs)


def test_resolved_settings_hold_library_defaults():
    import inspect

    from audioadv.attacks import pgd
    exp = load(SMOKE)
    job = next(j for j in exp.jobs if j.settings.get("attack") == "pgd")
    for name, p in inspect.signature(pgd).parameters.items():
        if p.kind is p.KEYWORD_ONLY and name not in ("targeted", "seed") and isinstance(p.default, (int, float, str)):
            assert job.settings[name] == p.default, name


BASE = """
name = "v"
[data.synth]
spec = "synth-commands?per_word=2"
[models.m]
train = { arch = "logmel-cnn", data = "synth", epochs = 1 }
"""


@pytest.mark.parametrize("jobs, message", [
    ('[[jobs]]\nkind = "atack"\nmodel = "m"', r"v.toml:8: jobs\[0\]: unknown job kind 'atack'; did you mean 'attack'\?"),
    ('[[jobs]]\nkind = "attack"\nmodel = "m"\nattack = "pgdd"', r"v.toml:10: jobs\[0\]: unknown attack 'pgdd'; did you mean 'pgd'\?"),
    ('[[jobs]]\nkind = "attack"\nmodel = "m"\nattack = "pgd"\nsetps = 3',
     r"v.toml:11: jobs\[0\]: unknown parameter 'setps' for attack pgd; did you mean 'steps'\?"),
    ('[[jobs]]\nkind = "attack"\nmodel = "m"\nattack = "pgd"\nsteps = "ten"', r"v.toml:11: jobs\[0\]: steps must be an integer \(the default is \d+\), got 'ten'"),
    ('[[jobs]]\nkind = "attack"\nmodel = "mm"\nattack = "pgd"', r"jobs\[0\]: unknown model 'mm'; did you mean 'm'\?"),
    ('[[jobs]]\nkind = "universal"\nmodel = "m"\nmethod = "penalti"', r"unknown method 'penalti'; did you mean 'penalty'\?"),
])
def test_validation_messages(tmp_path, capsys, jobs, message):
    import re
    path = tmp_path / "v.toml"
    path.write_text(BASE + jobs + "\n")
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()          # nothing ran


def test_validation_of_paths_and_targets(tmp_path, capsys):
    from audioadv import models
    from audioadv.models import save_checkpoint
    ck = tmp_path / "ck"
    net = models.create("cnn1d-rand", num_classes=3, input_length=1600)
    save_checkpoint(net, ck, {"classes": ["a", "b", "c"]})
    cases = [
        ('[data.f]\nspec = "fsdd:/no/such/folder"\n', r"data.f: /no/such/folder does not exist"),
        ('[data.f]\nspec = "synth-commands"\n[models.x]\ncheckpoint = "/no/such/ckpt"\n',
         r"models.x: checkpoint folder /no/such/ckpt not found"),
        (f'[data.f]\nspec = "synth-commands"\n[models.x]\ncheckpoint = "{ck}"\n[[jobs]]\nkind = "universal"\n'
         f'model = "x"\ndata = "f"\ntarget = "zz"\n', r"target 'zz' is not a class of model x \(a, b, c\)"),
        ('[data.f]\nspec = "nosuchloader:x"\n', r"unknown dataset loader 'nosuchloader'"),
        ('name = "x"\nsed = 1\n', r"unknown top-level key 'sed'; did you mean 'seed'\?"),
    ]
    for text, message in cases:
        path = tmp_path / "p.toml"
        path.write_text(text)
        assert main(["run", str(path), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        import re
        assert re.search(message, err), (message, err)
        assert "Traceback" not in err


def test_grid_expands_to_cartesian_product(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(BASE + '[[jobs]]\nkind = "attack"\nmodel = "m"\nattack = ["pgd", "ddn"]\nexamples = [2, 3]\n')
    exp = load(path)
    assert sorted((j.settings["attack"], j.settings["examples"]) for j in exp.jobs) == \
        [("ddn", 2), ("ddn", 3), ("pgd", 2), ("pgd", 3)]
    with pytest.raises(SpecError, match="not found"):
        load(tmp_path / "missing.toml")


def test_tables_round_trip_through_csv(smoke_run):
    md = tables_text(smoke_run, "markdown")
    body = tables_text(smoke_run, "csv")
    tables = [list(csv.reader(io.StringIO(block))) for block in body.strip().split("\n\n")]
    md_tables = [[[c.strip() for c in line.strip().strip("|").split("|")] for line in block.splitlines()
                  if line.startswith("|") and not line.startswith("|---")]
                 for block in md.split("**")[2::2]]
    assert tables == md_tables
    assert tables[0][0] == ["attack", "n", "success_rate", "snr_db", "l2"]
    assert [r[0] for r in tables[0][1:]] == ["pgd", "ddn"]
    assert all(r[1] == "8" for r in tables[0][1:])
    latex = tables_text(smoke_run, "latex")
    assert latex.count("\\begin{tabular}") == len(tables)
    by = list(csv.reader(io.StringIO(tables_text(smoke_run, "csv", by=["attack"]).split("\n\n")[1])))
    assert by[0][0] == "attack"


def test_store_is_strict_json_and_audio_named_by_ids(smoke_run):
    db = sqlite3.connect(smoke_run / "results.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for (data,) in db.execute("SELECT data FROM examples"):
        json.loads(data, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    for (settings, summary) in db.execute("SELECT settings, summary FROM jobs"):
        json.loads(settings, parse_constant=lambda c: pytest.fail(c))
        json.loads(summary, parse_constant=lambda c: pytest.fail(c))
    import re
    wavs = list((smoke_run / "audio").rglob("*.wav"))
    assert wavs
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", p.stem) and p.resolve().is_relative_to(smoke_run.resolve())
               for p in wavs)
    words = {"yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"}
    assert not any(w in p.stem.split("-") for p in wavs for w in words)   # never a label in a file name


def _report_in_browser(run_dir: Path, tmp_path: Path) -> dict:
    """Write the run's report and load it in headless Chromium: every image decodes, only files are read."""
    sys.path.insert(0, str(Path(__file__).parent))
    from browser import chromium, probe
    binary = chromium()
    if binary is None:
        pytest.skip("Debian's chromium is not installed and could not be installed with apt-get")
    assert main(["report", str(run_dir)]) == 0
    result = probe(run_dir / "report.html", tmp_path / "report.png", binary)
    assert result["images"] and all(w > 0 for w in result["images"]), result["images"]
    assert all(u.startswith("file:") for u in result["resources"] + result["sources"]), result
    return result


def test_report_in_a_real_browser(smoke_run, tmp_path):
    result = _report_in_browser(smoke_run, tmp_path)
    assert len(result["audio"]) >= 2 * 3 + 1                   # two attack jobs with players, and v
    assert all(d > 0 for d in result["audio"]), result["audio"]  # every player's file exists and decodes
    shot = tmp_path / "report.png"
    assert shot.is_file() and shot.stat().st_size > 10_000


AV = """
name = "av"
seed = 0
[data.av]
spec = "synth-av-commands?per_word=6&words=no,up"
[models.fused]
train = { arch = "av-commands", data = "av", epochs = 1 }
[[jobs]]
kind = "attack"
model = "fused"
attack = "msae"
sparsity = 0.3
examples = 2
only_correct = false
warmup = 2
rounds = 3
finetune = 2
audio = 1
"""


@pytest.fixture(scope="module")
def av_run(tmp_path_factory):
    """A tiny audio-visual run: one epoch of av-commands on two words, a short MSAE on two clips, the first saved."""
    exp = tmp_path_factory.mktemp("av") / "av.toml"
    exp.write_text(AV)
    out = exp.parent / "run"
    assert main(["run", str(exp), "--out", str(out), "--quiet"]) == 0
    return out


def test_av_frames_are_saved_with_their_audio_only(av_run, smoke_run):
    import numpy as np
    saved = list((av_run / "video").rglob("*.npz"))
    assert [p.stem for p in saved] == ["test-00000"]                 # audio = 1: the first example only
    assert (av_run / "audio" / saved[0].parent.name / "test-00000-adv.wav").is_file()
    with np.load(saved[0]) as z:
        assert z["clean"].shape == z["adv"].shape == (25, 32, 32) and z["adv"].dtype == np.float32
        assert float(z["fps"]) == 25
    assert not (smoke_run / "video").exists()                        # audio-only runs save no frames


def test_av_report_without_an_encoder_keeps_the_audio(av_run, tmp_path, monkeypatch, capsys):
    import shutil

    from audioadv.experiments import video
    from audioadv.experiments.report import write_report
    run = tmp_path / "run"
    shutil.copytree(av_run, run)
    monkeypatch.setattr(video, "ffmpeg", lambda: None)
    with pytest.warns(UserWarning, match="no ffmpeg was found"):
        page = write_report(run)
    text = page.read_text()
    assert text.count("no ffmpeg was found") == 1 and "<video" not in text
    assert text.count("<audio") == 3
    assert main(["report", str(run)]) == 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("audioadv report: warning:") and "no ffmpeg" in err


def test_av_report_videos_in_a_real_browser(av_run, tmp_path):
    from audioadv.experiments.video import encoder
    if encoder() is None:
        pytest.skip("no ffmpeg with H.264 or VP9 (install Debian's ffmpeg or pip install imageio-ffmpeg)")
    result = _report_in_browser(av_run, tmp_path)
    assert len(result["video"]) == 3                                 # clean, adversarial, perturbation alone
    assert all(v["duration"] > 0 and v["width"] > 0 for v in result["video"]), result["video"]
    clips = {p: p.stat().st_mtime_ns for p in (av_run / "report").rglob(f"*.{encoder()[1]}")}
    assert len(clips) == 3
    assert main(["report", str(av_run)]) == 0
    assert {p: p.stat().st_mtime_ns for p in clips} == clips          # written again without encoding again


def test_ray_gives_the_same_rows_as_one_process(smoke_run, tmp_path):
    pytest.importorskip("ray", reason="the distributed extra (Ray) is not installed")
    out = tmp_path / "ray"
    proc = subprocess.run(_cli("run", str(SMOKE), "--out", str(out), "--quiet", "--ray", "--workers", "2"),
                          capture_output=True, text=True, env=_env(), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _rows(out) == _rows(smoke_run)


def test_asr_attack_jobs_on_a_toy_recogniser(tmp_path):
    """asr-attack: a recogniser checkpoint, a manifest with transcripts, dense and sparse CW in one grid."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _asr_toy import batch, random_texts, train_toy

    from audioadv.io import save
    from audioadv.models.asr import save_recognizer
    save_recognizer(train_toy(), tmp_path / "asr")
    texts = random_texts(16, seed=3)
    x, lengths = batch(texts, seed=3)
    lines = []
    for i, (t, n) in enumerate(zip(texts, lengths)):
        save(tmp_path / "wav" / f"{i}.wav", x[i, :int(n)], 16000, subtype="FLOAT")
        lines.append(json.dumps({"path": f"wav/{i}.wav", "text": t, "split": "test"}))
    (tmp_path / "list.jsonl").write_text("\n".join(lines) + "\n")
    exp = tmp_path / "asr.toml"
    exp.write_text(f'''
name = "asr"
[data.toy]
spec = "manifest:{tmp_path / 'list.jsonl'}"
[models.asr]
checkpoint = "{tmp_path / 'asr'}"
[[jobs]]
kind = "asr-attack"
model = "asr"
data = "toy"
attack = "cw"
sparsity = [0.0, 0.5]
examples = 4
max_iter = 60
lr = 0.01
audio = 1
[[tables]]
title = "toy"
kind = "asr-attack"
rows = ["attack"]
columns = ["sparsity"]
values = ["success_rate", "l0"]
''')
    out = tmp_path / "run"
    assert main(["run", str(exp), "--out", str(out), "--quiet"]) == 0
    store = Store(out, create=False)
    jobs = {j["labels"]["sparsity"]: j for j in store.jobs("asr-attack")}
    assert set(jobs) == {0.0, 0.5} and all(j["status"] == "done" for j in jobs.values())
    for sparsity, job in jobs.items():
        rows = store.examples(job["job_id"])
        assert len(rows) == 4
        assert all({"decoded", "target", "original", "success", "cer_target", "l0", "snr_db"} <= set(r) for r in rows)
        assert all(r["target"] != r["original"] for r in rows)
        if sparsity:
            assert all(r["l0"] <= 1 - sparsity + 1e-6 for r in rows)   # at most half the samples changed
    store.close()
    text = tables_text(out, "csv")
    assert text.splitlines()[0] == "attack,sparsity=0.0,sparsity=0.5"


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.toml")), ids=lambda p: p.name)
def test_every_experiment_file_validates(path, monkeypatch):
    """Each reproduction's file is valid against the library as it is. Files whose inputs are made by an
    earlier step (a trained recogniser, the demo's checkpoint) or live in ../shared skip when those are absent."""
    monkeypatch.chdir(ROOT)
    try:
        exp = load(path)
    except SpecError as exc:
        if "not found" in str(exc) or "does not exist" in str(exc):
            pytest.skip(f"{path.name} needs an input that is not here: {exc}")
        raise
    assert exp.jobs or exp.models


def test_measurements_recorded_outside_a_run_are_tabulated(tmp_path):
    """What benchmarks use: Store.record replaces a job of the same settings, declare_tables names the table."""
    from audioadv.experiments.runner import declare_tables
    store = Store(tmp_path)
    for speed in (1.0, 2.0):     # the second record of the same settings replaces the first
        store.record("benchmark", "m", {"model": "a"}, [{"speed": speed}], labels={"model": "a"})
    store.record("benchmark", "m", {"model": "b"}, [{"speed": 5.0}], labels={"model": "b"})
    store.close()
    declare_tables(tmp_path, "bench", "python benchmarks/x.py", [
        {"title": "Speed", "kind": "benchmark", "rows": ["model"], "values": ["speed"]}])
    rows = list(csv.reader(io.StringIO(tables_text(tmp_path, "csv"))))
    assert rows == [["model", "speed"], ["a", "2"], ["b", "5"]]
    assert "From `python benchmarks/x.py`." in tables_text(tmp_path)


def test_only_selects_jobs_by_name(tmp_path, capsys):
    path = tmp_path / "o.toml"
    path.write_text(BASE + '[[jobs]]\nkind = "attack"\nmodel = "m"\nattack = ["pgd", "ddn"]\n')
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--only", "cw_l2"]) == 2
    assert "no job's name contains 'cw_l2'" in capsys.readouterr().err


def test_unavailable_device_is_a_clear_error(tmp_path):
    import torch
    bad = "cuda" if not torch.cuda.is_available() else "tpu"
    proc = subprocess.run(_cli("run", str(SMOKE), "--out", str(tmp_path / "x"), "--device", bad),
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"audioadv run: --device {bad}:") and "Traceback" not in proc.stderr


def test_gpu_run_matches_the_cpu_run(smoke_run, tmp_path):
    """The same file on a GPU: the same jobs and examples, and success rates close to the CPU run's (float
    arithmetic differs between devices, so training and attacks do not give the same bits)."""
    import torch
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    out = tmp_path / "gpu"
    proc = subprocess.run(_cli("run", str(SMOKE), "--out", str(out), "--quiet", "--device", "cuda"),
                          capture_output=True, text=True, env=_env(), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cpu, gpu = _rows(smoke_run), _rows(out)
    assert cpu.keys() == gpu.keys()
    for field in ("success", "correct"):
        a = [r[field] for r in cpu.values() if field in r]
        b = [gpu[k][field] for k, r in cpu.items() if field in r]
        assert abs(sum(a) - sum(b)) <= max(2, 0.1 * len(a)), field
