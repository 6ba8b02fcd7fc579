import os

import numpy as np
import pytest
import soundfile as sf
import torch

from audioadv.io import AudioError, load, save


def _tone(sr, seconds=0.5, f=440.0, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * f * t).astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


@pytest.mark.parametrize("ext,subtype", [("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS"), ("wav", "FLOAT")])
def test_load_formats_resample_and_range(tmp_path, ext, subtype):
    p = tmp_path / f"a.{ext}"
    sf.write(p, _tone(8000), 8000, subtype=subtype)
    wav = load(p, 16000)
    assert wav.dtype == torch.float32 and wav.dim() == 1
    assert abs(wav.shape[0] - 8000) <= 2
    assert wav.abs().max() <= 1.0
    # polyphase resampling keeps the tone's frequency: dominant FFT bin at 440 Hz
    spec = np.abs(np.fft.rfft(wav.numpy()))
    assert abs(spec.argmax() * 16000 / wav.shape[0] - 440) < 5


def test_stereo_is_mixed_down(tmp_path):
    p = tmp_path / "st.wav"
    sf.write(p, _tone(16000, channels=2), 16000, subtype="FLOAT")
    wav = load(p)
    assert wav.dim() == 1
    np.testing.assert_allclose(wav.numpy(), 0.75 * _tone(16000), atol=1e-6)
    assert load(p, mono=False).shape[0] == 2


def test_keep_native_rate(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, _tone(8000), 8000)
    assert load(p, sample_rate=None).shape[0] == 4000


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="nope.wav: file not found"):
        load(tmp_path / "nope.wav")


def test_directory(tmp_path):
    with pytest.raises(AudioError, match="directory"):
        load(tmp_path)


def test_corrupt_file(tmp_path):
    p = tmp_path / "bad.wav"
    p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(AudioError, match="bad.wav: .*(corrupt|unsupported)"):
        load(p)


def test_unsupported_format(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello, this is not audio\n" * 10)
    with pytest.raises(AudioError, match="notes.txt: unsupported format"):
        load(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav: empty file"):
        load(p)


def test_zero_samples(tmp_path):
    p = tmp_path / "zero.wav"
    sf.write(p, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="zero.wav: contains zero samples"):
        load(p)


def test_nan_samples(tmp_path):
    p = tmp_path / "nan.wav"
    x = _tone(16000)
    x[10] = np.nan
    x[20] = np.inf
    sf.write(p, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: contains 2 NaN or infinite"):
        load(p)


def test_too_long(tmp_path):
    p = tmp_path / "long.wav"
    sf.write(p, _tone(16000, seconds=3.0), 16000)
    with pytest.raises(AudioError, match="long.wav: too long: 3.0 s exceeds the limit of 2.0 s"):
        load(p, max_seconds=2.0)
    assert load(p, max_seconds=None).shape[0] == 48000


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without read permission")
def test_unreadable(tmp_path):
    p = tmp_path / "locked.wav"
    sf.write(p, _tone(16000), 16000)
    p.chmod(0)
    with pytest.raises(AudioError, match="permission denied"):
        load(p)


def test_save_pcm16_roundtrip_and_clipping_reported(tmp_path):
    x = torch.tensor(_tone(16000))
    p = tmp_path / "out" / "x.wav"
    assert save(p, x, 16000) == 0
    assert sf.info(p).subtype == "PCM_16"
    y = load(p)
    assert torch.allclose(x, y, atol=1 / 32768 + 1e-6)
    loud = x * 3
    with pytest.warns(UserWarning, match="clipped"):
        n = save(tmp_path / "loud.wav", loud, 16000)
    assert n == int((loud.abs() > 1).sum()) and n > 0


def test_save_float_keeps_values(tmp_path):
    x = torch.tensor([0.0, 1.5, -2.0, 0.25])
    p = tmp_path / "f.wav"
    assert save(p, x, 16000, subtype="FLOAT") == 0
    data, _ = sf.read(p, dtype="float32")
    np.testing.assert_array_equal(data, x.numpy())


def test_save_rejects_nan(tmp_path):
    with pytest.raises(AudioError, match="NaN"):
        save(tmp_path / "n.wav", torch.tensor([0.0, float("nan")]), 16000)


def test_result_records_are_strict_json():
    """Infinity and NaN are not JSON: result writers put null where a quantity does not exist."""
    import json
    import math

    from audioadv.results import dumps, json_safe
    rec = {"snr": math.inf, "db_x": -math.inf, "mean": math.nan, "ok": 1.5, "n": 3, "nested": [{"x": math.inf}, (2.0,)]}
    assert json_safe(rec) == {"snr": None, "db_x": None, "mean": None, "ok": 1.5, "n": 3, "nested": [{"x": None}, [2.0]]}
    text = dumps(rec)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c))["nested"][0]["x"] is None


def test_truncated_wav_is_refused_with_declared_and_present_lengths(tmp_path):
    path = tmp_path / "cut.wav"
    save(path, torch.zeros(16000) + 0.1, 16000)
    data = path.read_bytes()
    path.write_bytes(data[:44 + 16])            # header promises 16000 samples, 8 are there
    with pytest.raises(AudioError, match=r"cut.wav: truncated: the header declares 16000 samples but the file holds 8"):
        load(path)
    with pytest.warns(UserWarning, match="truncated"):
        assert load(path, allow_truncated=True).shape == (8,)


def test_float_file_outside_full_scale_is_clipped_with_a_warning(tmp_path):
    import soundfile as sf
    path = tmp_path / "loud.wav"
    sf.write(str(path), np.array([0.1, 3.0, -2.0], dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.warns(UserWarning, match=r"loud.wav: 2 sample\(s\) outside \[-1, 1\] \(peak 3\)"):
        x = load(path, None)
    assert x.tolist() == pytest.approx([0.1, 1.0, -1.0])
