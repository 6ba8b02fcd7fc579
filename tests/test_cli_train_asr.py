"""`audioadv train-asr` / `eval-asr` on a tiny manifest of the toy tone-letter task: training stops
after --steps optimiser steps, options not given take the library's defaults, clear errors."""
import json

import torch

from _asr_toy import SR, batch, random_texts
from audioadv.asr_train import train_recognizer
from audioadv.cli import main
from audioadv.io import save


def make_manifest(root):
    rows = []
    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        texts = random_texts(6, seed=seed)
        x, lengths = batch(texts, seed=seed)
        for i, t in enumerate(texts):
            name = f"{split}{i}.wav"
            save(root / name, x[i, :int(lengths[i])], SR, subtype="FLOAT")
            rows.append({"path": name, "text": t, "split": split})
    (root / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"manifest:{root / 'toy.jsonl'}"


def test_train_asr_stops_after_steps_and_eval_asr_reads_it(tmp_path, capsys):
    spec = make_manifest(tmp_path)
    out = tmp_path / "run"
    assert main(["train-asr", "--data", spec, "--steps", "3", "--batch-seconds", "1", "--hidden", "8",
                 "--channels", "8", "--n-mels", "20", "--layers", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 3
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "ctc-recognizer" and cfg["hidden"] == 8
    # an option not given is the library's default, not a second copy in argparse
    import inspect
    from audioadv.models.asr import CTCRecognizer
    assert cfg["feature_norm"] == inspect.signature(CTCRecognizer).parameters["feature_norm"].default
    assert summary["settings"]["max_steps"] == "3" and "lr" not in summary["settings"]
    assert inspect.signature(train_recognizer).parameters["max_steps"].default is None
    assert main(["eval-asr", str(out), "--data", spec, "--split", "test", "--json", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())[spec]
    assert res["n"] == 6 and res["decoding"] == "greedy" and 0 <= res["cer"]
    capsys.readouterr()
    assert main(["train-asr", "--data", spec, "--init", str(out), "--hidden", "16", "--steps", "1",
                 "--out", str(tmp_path / "again")]) == 2
    assert "--hidden" in capsys.readouterr().err
