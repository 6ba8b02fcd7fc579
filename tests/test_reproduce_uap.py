"""scripts/reproduce_uap.py end to end on a one-model zoo and a folder of tone WAVs named like FSDD: a budgeted penalty
row, resume, and the two diagnostics that read the rows back (--snr-bands, --at-snr); scripts/uap_probe.py on the
same zoo."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _uap_tiny import SR, T, tones

ROOT = Path(__file__).resolve().parents[1]


def run(*args, script="reproduce_uap.py", env=None):
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    import soundfile as sf

    from audioadv.models import create, save_checkpoint
    root = tmp_path_factory.mktemp("reproduce_uap")
    folder = root / "fsdd"
    folder.mkdir()
    x, y = tones(80, seed=3)
    for i, (w, lab) in enumerate(zip(x, y)):   # takes 0-4 are FSDD's test split
        sf.write(folder / f"{int(lab)}_{chr(97 + i // 10)}_{i % 10}.wav", (w * (0.3 + i % 7 * 0.3)).numpy(), SR)
    torch.manual_seed(0)
    save_checkpoint(create("cnn1d-rand", num_classes=10, input_length=T, sample_rate=SR), root / "zoo" / "fsdd-cnn1d-rand")
    return root, folder


def test_budgeted_rows_resume_and_diagnostics(zoo):
    root, folder = zoo
    runs, report = root / "runs.jsonl", root / "uap.md"
    common = ["--zoo", root / "zoo", "--data", "fsdd", "--fsdd", folder, "--runs", runs, "--report", report,
              "--min-accuracy", "0", "--bar-accuracy", "0"]
    out = run(*common, "--methods", "penalty", "--modes", "untargeted", "--min-snr", "15", "--max-iter", "4",
              "--n-craft-penalty", "20", "--lr", "0.01", "--vdir", root / "v")
    row = json.loads(runs.read_text())
    assert row["settings"]["min_snr"] == 15.0 and row["xi_used"] > 0 and row["craft"]["mean_snr"] >= 15.0 - 1e-3
    assert "test success" in out and Path(row["perturbation"]).exists()
    text = report.read_text()
    assert "Rows crafted by:" in text and "--min-snr 15" in text        # a side table names its crafting command
    run(*common, "--methods", "penalty", "--modes", "untargeted", "--min-snr", "15")     # resumes: nothing to do
    assert len(runs.read_text().splitlines()) == 1

    run(*common, "--snr-bands")
    bands = json.loads((root / "uap_snr_bands.jsonl").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert sum(b["n"] for b in bands["bands"]) == row["test"]["n"]      # the quartiles cover every test clip
    assert sum(b["n"] * b["success"] for b in bands["bands"]) == pytest.approx(row["test"]["successes"])
    snrs = [b["mean_snr"] for b in bands["bands"]]
    assert snrs == sorted(snrs) and bands["level_sd"] > 1                # the clips' levels were spread on purpose

    run(*common, "--at-snr", "25")
    at = json.loads((root / "uap_at_snr.jsonl").read_text())
    assert at["alpha"] <= 1 and at["craft_snr"] == pytest.approx(max(25.0, row["craft"]["mean_snr"]), abs=0.05)


def test_uap_probe_budget_and_iterative(zoo):
    import os
    root, folder = zoo
    env = {**os.environ, "FSDD": str(folder)}
    out = root / "probes.jsonl"
    for settings in ('{"snr_ball": 15, "max_iter": 3, "n_craft": 20, "lr": 0.01, "c": 100, "escalate": false}',
                     '{"method": "iterative", "snr_ball": 15, "max_passes": 1, "n_craft": 20, "batch_size": 10}'):
        run("fsdd", "cnn1d-rand", "U", "t", settings, "--zoo", root / "zoo", "--out", out, script="uap_probe.py", env=env)
    pen, it = [json.loads(l) for l in out.read_text().splitlines()]
    assert pen["method"] == "penalty" and pen["settings"]["min_snr"] == 15 and pen["craft_snr"] >= 15 - 1e-3
    assert it["method"] == "iterative" and it["settings"]["p"] == 2 and it["settings"]["xi"] > 0
    assert math.isnan(it["craft_snr"]) or it["craft_snr"] >= 15 - 1e-3     # nan: this untrained model left v at 0
    assert pen["heldout"] is not None and "uap_probe.py fsdd cnn1d-rand U t" in pen["command"]
