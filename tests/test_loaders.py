"""Loaders for real corpora, each on a tiny folder written here in the corpus's layout, and on
the project's real recordings (shared_data) where present."""
import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from audioadv.data import load_dataset, loader_names
from audioadv.io import AudioError


def tone(path, freq, seconds=0.5, sr=16000, channels=1, subtype="PCM_16"):
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    if channels == 2:
        x = np.stack([x, 0.5 * x], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, subtype=subtype)
    return path


def test_all_loaders_registered():
    assert {"fsdd", "speechcommands", "librispeech", "urbansound8k", "manifest",
            "synth-commands", "synth-phrases"} <= set(loader_names())
    with pytest.raises(ValueError, match="needs a folder"):
        load_dataset("speechcommands", "train")


# --- Free Spoken Digit Dataset ---------------------------------------------------------------

def test_fsdd_tiny_folder(tmp_path):
    for d in range(10):
        for spk in ("jackson", "theo"):
            for take in (0, 1, 5, 6, 7):
                tone(tmp_path / "recordings" / f"{d}_{spk}_{take}.wav", 200 + 30 * d, seconds=0.3, sr=8000)
    (tmp_path / "recordings" / "README.txt").write_text("not audio, ignored")
    train, test = load_dataset(f"fsdd:{tmp_path}", "train"), load_dataset(f"fsdd:{tmp_path}", "test")
    assert (len(train), len(test)) == (60, 40) and {it["take"] for it in test.items} == {0, 1}
    assert train.waves.shape == (60, 16000) and torch.bincount(train.labels).tolist() == [6] * 10
    spk = load_dataset(f"fsdd:{tmp_path}?label=speaker", "test")
    assert spk.classes == ["jackson", "theo"]


# --- Google Speech Commands ---------------------------------------------------------------

@pytest.fixture
def speechcommands_dir(tmp_path):
    root = tmp_path / "speech_commands_v0.02"
    words = {"yes": 300, "no": 500, "bed": 700}
    for w, f in words.items():
        for spk in ("aaaa1111", "bbbb2222", "cccc3333"):
            for take in range(2):
                tone(root / w / f"{spk}_nohash_{take}.wav", f + 10 * take, seconds=1.0)
    tone(root / "_background_noise_" / "white_noise.wav", 100, seconds=3.0)
    (root / "validation_list.txt").write_text("yes/bbbb2222_nohash_0.wav\nyes/bbbb2222_nohash_1.wav\nno/bbbb2222_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("yes/cccc3333_nohash_0.wav\nno/cccc3333_nohash_1.wav\nbed/cccc3333_nohash_0.wav\n")
    return root


def test_speechcommands_splits_and_labels(speechcommands_dir):
    spec = f"speechcommands:{speechcommands_dir}"
    train, val, test = (load_dataset(spec, s) for s in ("train", "val", "test"))
    assert train.classes == ["bed", "no", "yes"]  # every word folder, _background_noise_ ignored
    assert (len(train), len(val), len(test)) == (18 - 6, 3, 3)
    paths = [set(it["path"] for it in d.items) for d in (train, val, test)]
    assert not paths[0] & paths[1] and not paths[0] & paths[2] and not paths[1] & paths[2]
    assert train.waves.shape == (12, 16000)
    assert all(it["word"] == train.classes[lab] for it, lab in zip(train.items, train.labels.tolist()))
    assert {it["speaker"] for it in test.items} == {"cccc3333"}
    two = load_dataset(spec + "?words=yes,no", "train")
    assert two.classes == ["yes", "no"] and len(two) == 3 + 4
    unk = load_dataset(spec + "?words=yes,no&unknown=1", "train")
    assert unk.classes == ["yes", "no", "_unknown_"] and (unk.labels == 2).sum() == 5
    with pytest.raises(FileNotFoundError, match="stop"):
        load_dataset(spec + "?words=commands", "train")


def test_speechcommands_missing_lists_named(speechcommands_dir):
    (speechcommands_dir / "testing_list.txt").unlink()
    with pytest.raises(FileNotFoundError, match="testing_list.txt"):
        load_dataset(f"speechcommands:{speechcommands_dir}", "train")


# --- LibriSpeech ------------------------------------------------------------------------------

@pytest.fixture
def librispeech_dir(tmp_path):
    root = tmp_path / "test-clean"
    for spk, chap, f in (("19", "198", 200), ("1089", "134686", 400)):
        lines = []
        for utt in range(5):
            tone(root / spk / chap / f"{spk}-{chap}-{utt:04d}.flac", f + 20 * utt, seconds=0.6 + 0.1 * utt,
                 subtype="PCM_16")
            lines.append(f"{spk}-{chap}-{utt:04d} HELLO NUMBER {utt}")
        (root / spk / chap / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    (root / "SPEAKERS.TXT").write_text(";ID |SEX| SUBSET | MINUTES | NAME\n19 | F | test-clean | 1.0 | A\n1089 | M | test-clean | 1.0 | B\n")
    return root


def test_librispeech_standard_layout(librispeech_dir):
    spec = f"librispeech:{librispeech_dir}"
    train, test = load_dataset(spec, "train"), load_dataset(spec, "test")
    assert train.classes == ["19", "1089"]  # numeric order
    assert (len(train), len(test)) == (8, 2)  # round(0.7 * 5) = 4 of 5 per speaker
    assert [it["utterance"] for it in test.items] == [4, 4]
    assert train.items[0]["text"] == "HELLO NUMBER 0" and train.items[0]["sex"] == "F"
    assert train.waves.shape == (8, 48000)
    asr = load_dataset(spec + "?align=start", "all", input_length=None)
    longest = max(it["num_samples"] for it in asr.items)
    assert asr.waves.shape == (10, longest) and longest == int(1.0 * 16000)
    first = asr.items[0]
    assert (asr.waves[0, first["num_samples"]:] == 0).all() and asr.waves[0, :100].abs().max() > 0


def test_librispeech_flat_layout_and_bad_file(tmp_path):
    root = tmp_path / "flat"
    for spk in ("367", "533"):
        for utt in range(10):
            tone(root / spk / f"{spk}-130732-{utt:04d}.flac", 300 + utt, seconds=0.3)
    train, test = load_dataset(f"librispeech:{root}", "train"), load_dataset(f"librispeech:{root}", "test")
    assert (len(train), len(test)) == (14, 6)
    assert "text" not in train.items[0]
    (root / "367" / "367-130732-0003.flac").write_bytes(b"not audio")
    with pytest.raises(AudioError, match="367-130732-0003.flac"):
        load_dataset(f"librispeech:{root}", "train")


# --- UrbanSound8K ---------------------------------------------------------------------------

@pytest.fixture
def urbansound_dir(tmp_path):
    root = tmp_path / "UrbanSound8K"
    classes = ["air_conditioner", "car_horn", "children_playing"]
    rows = []
    for fold in range(1, 11):
        for cid, name in enumerate(classes):
            fname = f"{100 + fold}-{cid}-0-0.wav"
            tone(root / "audio" / f"fold{fold}" / fname, 200 + 100 * cid, seconds=0.25, sr=44100, channels=2)
            rows.append([fname, 100 + fold, 0.0, 0.25, 1, fold, cid, name])
    (root / "metadata").mkdir(parents=True)
    with (root / "metadata" / "UrbanSound8K.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"])
        w.writerows(rows[::-1])  # order in the file must not matter for the classes
    return root


def test_urbansound8k_folds(urbansound_dir):
    spec = f"urbansound8k:{urbansound_dir}"
    train, val, test = (load_dataset(spec, s) for s in ("train", "val", "test"))
    assert train.classes == ["air_conditioner", "car_horn", "children_playing"]
    assert (len(train), len(val), len(test)) == (24, 3, 3)
    assert {it["fold"] for it in test.items} == {10} and {it["fold"] for it in val.items} == {9}
    assert train.waves.shape == (24, 64000)
    # stereo 44.1 kHz -> mono 16 kHz, centred: 0.25 s of tone in the middle of the 4 s window
    nz = (train.waves[0].abs() > 0).nonzero().flatten()
    assert abs(int(nz[0]) - (64000 - 4000) // 2) <= 2 and abs(len(nz) - 4000) <= 3
    custom = load_dataset(spec + "?test_folds=1,2&val_folds=", "test")
    assert len(custom) == 6 and load_dataset(spec, "fold3").items[0]["fold"] == 3
    with pytest.raises(ValueError, match="both test and val"):
        load_dataset(spec + "?test_folds=9", "train")


# --- manifest -------------------------------------------------------------------------------

def test_manifest_csv_labels_relative_paths_and_splits(tmp_path):
    for i in range(6):
        tone(tmp_path / "clips" / f"c{i}.wav", 200 + 50 * i, seconds=0.3, sr=8000)
    (tmp_path / "m.csv").write_text("path,label,split,speaker\n" + "".join(
        f"clips/c{i}.wav,{['dog', 'cat'][i % 2]},{'test' if i >= 4 else 'train'},s{i}\n" for i in range(6)))
    spec = f"manifest:{tmp_path / 'm.csv'}"
    train, test = load_dataset(spec, "train"), load_dataset(spec, "test")
    assert train.classes == ["cat", "dog"] and len(train) == 4 and len(test) == 2
    assert train.labels.tolist() == [1, 0, 1, 0] and train.items[0]["speaker"] == "s0"
    assert train.waves.shape == (4, 16000) and train.items[0]["num_samples"] == 4800
    assert load_dataset(spec + "?classes=dog,cat", "train").labels.tolist() == [0, 1, 0, 1]


def test_manifest_jsonl_transcripts_left_aligned(tmp_path):
    tone(tmp_path / "a.flac", 300, seconds=0.5)
    tone(tmp_path / "sub" / "b.wav", 400, seconds=0.2)
    (tmp_path / "asr.jsonl").write_text(json.dumps({"path": "a.flac", "text": "call mom"}) + "\n\n" +
                                        json.dumps({"path": str(tmp_path / "sub" / "b.wav"), "text": "stop"}) + "\n")
    d = load_dataset(f"manifest:{tmp_path / 'asr.jsonl'}", "all")
    assert d.classes == ["utterance"] and d.waves.shape == (2, 8000)
    assert [it["text"] for it in d.items] == ["call mom", "stop"]
    assert [it["num_samples"] for it in d.items] == [8000, 3200]
    assert (d.waves[1, 3200:] == 0).all() and d.waves[1, :3200].abs().max() > 0.1
    with pytest.raises(ValueError, match="no 'split' column"):
        load_dataset(f"manifest:{tmp_path / 'asr.jsonl'}", "train")


@pytest.mark.parametrize("content, match", [
    ("file,label\na.wav,x\n", "'path' column"),
    ("path,label\nmissing.wav,x\n", "missing.wav"),
    ("path,speaker\na.wav,x\n", "'label' or a 'text'"),
])
def test_manifest_errors_name_the_problem(tmp_path, content, match):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises((ValueError, AudioError), match=match):
        load_dataset(f"manifest:{tmp_path / 'm.csv'}", "all")


def test_manifest_bad_json_line_named(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"path": "a.wav", "label": "x"}\n{broken\n')
    with pytest.raises(ValueError, match="line 2"):
        load_dataset(f"manifest:{tmp_path / 'm.jsonl'}", "all")


# --- the project's real recordings ----------------------------------------------------------

def test_real_fsdd_split_counts(shared_data):
    test = load_dataset(f"fsdd:{shared_data / 'fsdd'}", "test")
    assert len(test) == 300 and {it["take"] for it in test.items} == set(range(5))
    assert torch.bincount(test.labels, minlength=10).tolist() == [30] * 10
    assert len({it["speaker"] for it in test.items}) == 6


def test_real_librispeech_10spk_split(shared_data):
    root = shared_data / "librispeech-10spk"
    train, test = load_dataset(f"librispeech:{root}", "train"), load_dataset(f"librispeech:{root}", "test")
    assert (len(train), len(test)) == (70, 30) and train.num_classes == 10
    assert torch.bincount(train.labels).tolist() == [7] * 10 and torch.bincount(test.labels).tolist() == [3] * 10
    assert not {it["id"] for it in train.items} & {it["id"] for it in test.items}
    for spk in train.classes:  # the first 7 sorted files of each speaker train, the last 3 test
        names = sorted(p.name for p in (root / spk).glob("*.flac"))
        assert [it["path"].rsplit("/", 1)[1] for it in test.items if it["speaker"] == spk] == names[7:]
    assert {it.get("sex") for it in train.items} <= {"M", "F"}
