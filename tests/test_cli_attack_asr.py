"""`audioadv attack-asr` on the toy recogniser of tests/_asr_toy.py: WAVs in, adversarial WAVs and
per-utterance rows out, resume, refusal of other settings, clear errors."""
import json

import pytest
import torch

from _asr_toy import SR, batch, train_toy
from audioadv.cli import main
from audioadv.io import load, save
from audioadv.models.asr import save_recognizer, transcribe


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("attack_asr")
    model = train_toy()
    save_recognizer(model, root / "asr")
    x, lengths = batch(["abcd", "dcb"], seed=9)
    wavs = []
    for i, name in enumerate(["one", "two"]):
        save(root / f"{name}.wav", x[i, :int(lengths[i])], SR, subtype="FLOAT")
        wavs.append(str(root / f"{name}.wav"))
    (root / "targets.txt").write_text("abdd\ndab\n")
    return root, wavs


def test_attack_asr_writes_adversarial_wavs_and_rows(setup, capsys):
    root, wavs = setup
    out = root / "run"
    args = ["attack-asr", str(root / "asr"), "--wav", *wavs, "--targets", str(root / "targets.txt"), "--attack", "cw",
            "--tau", "0.2", "--lr", "3e-3", "--max-iter", "60", "--out", str(out)]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["one", "two"]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["settings"]["tau"] == 0.2 and settings["settings"]["max_iter"] == 60
    assert settings["settings"]["shrink"] == 0.8  # defaults not given are recorded too
    assert all(r["iterations"] == 60 and r["seconds"] > 0 for r in rows)  # the attack's own record
    assert all(0 <= r["first_success"] < 60 for r in rows if r["attack_success"])
    from audioadv.models.asr import load_recognizer
    model = load_recognizer(root / "asr")
    for r in rows:
        assert r["target"] == {"one": "abdd", "two": "dab"}[r["id"]] and r["original"] == r["clean_decoded"]
        adv = load(out / r["wav"], SR)
        assert transcribe(model, adv[None], torch.tensor([len(adv)]))[0] == r["decoded"]  # the file is the result
        assert r["success"] == (r["decoded"] == r["target"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["successes"] == sum(r["success"] for r in rows) >= 1
    # a rerun resumes (nothing to do); other settings are refused, naming what differs
    assert main(args + ["--batch-size", "1"]) == 0        # the batch size changes no result: same settings
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    assert main(args[:-2] + ["--sparsity", "0.4", "--out", str(out)]) == 2
    assert "sparsity" in capsys.readouterr().err


def test_attack_asr_rows_are_strict_json_when_nothing_changes(setup):
    """A target the clean utterance already decodes to leaves it unchanged: SNR and dB_x have no finite value and are
    written as null, not as Infinity (which is not JSON); the summary averages what is there."""
    root, wavs = setup
    from audioadv.models.asr import load_recognizer
    model = load_recognizer(root / "asr")
    x = load(wavs[0], SR)
    clean = transcribe(model, x[None], torch.tensor([len(x)]))[0]
    out = root / "unchanged"
    assert main(["attack-asr", str(root / "asr"), "--wav", wavs[0], "--target", clean, "--max-iter", "5",
                 "--out", str(out)]) == 0

    def refuse(name):
        raise AssertionError(f"{name} in results.jsonl")
    row = json.loads((out / "results.jsonl").read_text(), parse_constant=refuse)
    assert row["success"] and row["l0"] == 0.0 and row["snr_db"] is None and row["db_x"] is None
    summary = json.loads((out / "summary.json").read_text(), parse_constant=refuse)
    assert summary["successes"] == 1 and summary["mean_snr_db"] is None


def test_attack_asr_sparse_and_pcm16(setup):
    root, wavs = setup
    out = root / "sparse"
    assert main(["attack-asr", str(root / "asr"), "--wav", wavs[0], "--target", "abdd", "--sparsity", "0.4", "--tau", "0.2",
                 "--lr", "3e-3", "--max-iter", "80", "--pcm16", "--out", str(out)]) == 0
    row = json.loads((out / "results.jsonl").read_text())
    assert "success_saved" in row and row["l0"] <= 0.6 + 1e-6  # at most 60% of the samples changed


@pytest.mark.parametrize("extra, message", [
    (["--target", ""], "--target is empty"),
    (["--targets", "/nonexistent/t.txt"], "not found"),
    (["--target", "ab", "--ratio", "0.5"], "--ratio does not apply to --attack cw"),
    (["--target", "ab", "--patience-stage2", "5"], "--patience-stage2 does not apply to --attack cw"),
    (["--target", "ab", "--sparsity", "1.5"], "--sparsity must lie in [0, 1)"),
    (["--target", "xyz"], "has no character the recogniser knows"),
])
def test_attack_asr_bad_input_is_one_clear_line(setup, capsys, extra, message):
    root, wavs = setup
    assert main(["attack-asr", str(root / "asr"), "--wav", wavs[0], *extra, "--out", str(root / "bad")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_attack_asr_names_a_bad_wav(setup, capsys, tmp_path):
    root, _ = setup
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not a wav")
    assert main(["attack-asr", str(root / "asr"), "--wav", str(bad), "--target", "ab", "--out", str(tmp_path / "o")]) == 2
    assert "broken.wav" in capsys.readouterr().err


def test_attack_asr_on_a_hugging_face_folder(tmp_path):
    # a tiny randomly initialised Wav2Vec2ForCTC saved as a user's local folder, recognised by its config.json
    pytest.importorskip("transformers")
    from _hf_tiny import save_tiny_wav2vec2
    save_tiny_wav2vec2(tmp_path / "hf")
    save(tmp_path / "in.wav", 0.1 * torch.randn(8000), SR, subtype="FLOAT")
    out = tmp_path / "run"
    assert main(["attack-asr", str(tmp_path / "hf"), "--wav", str(tmp_path / "in.wav"), "--target", "eat",
                 "--max-iter", "3", "--out", str(out)]) == 0
    row = json.loads((out / "results.jsonl").read_text())
    assert row["id"] == "in" and row["target"] == "eat" and (out / row["wav"]).is_file()
    assert json.loads((out / "settings.json").read_text())["kind"] == "hf-wav2vec2"
