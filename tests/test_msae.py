"""MSAE: lp-box projections, exact mask cardinality per modality, structured masks, dict pass-through."""
import math

import pytest
import torch

from audioadv import models
from audioadv.attacks.msae import run_base
from audioadv.attacks.msae import box_projection, msae, sphere_projection
from audioadv.attacks.msae_baselines import topk_of

FAST = dict(warmup=3, rounds=6, finetune=3)


def test_box_projection_hand_checked():
    v = torch.tensor([[-0.5, 0.3, 1.7, 1.0]])
    assert torch.equal(box_projection(v), torch.tensor([[0.0, 0.3, 1.0, 1.0]]))


def test_sphere_projection_hand_checked():
    # v - 1/2 = (1.5, 0), n = 2: 1/2 + sqrt(2)/2 * (1, 0)
    out = sphere_projection(torch.tensor([[2.0, 0.5]]))
    assert torch.allclose(out, torch.tensor([[0.5 + math.sqrt(2) / 2, 0.5]]))
    assert torch.allclose((out - 0.5).pow(2).sum(), torch.tensor(2 / 4))
    # binary points lie on the sphere: unchanged
    b = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    assert torch.allclose(sphere_projection(b), b)
    # the centre goes to the all-ones point
    assert torch.allclose(sphere_projection(torch.full((1, 3), 0.5)), torch.ones(1, 3))
    # invalid entries are excluded from n and returned as 0
    out = sphere_projection(torch.tensor([[2.0, 0.5, 9.0]]), torch.tensor([[True, True, False]]))
    assert torch.allclose(out, torch.tensor([[0.5 + math.sqrt(2) / 2, 0.5, 0.0]]))


def _net(num_classes=4, **kw):
    torch.manual_seed(0)
    return models.create("av-commands", num_classes=num_classes, input_length=1600, **kw).eval()


def test_final_mask_has_exactly_k_ones_per_modality_and_pass_through():
    net = _net()
    x = net.example_inputs(3)
    x["speaker"] = torch.tensor([7, 8, 9])
    target = (net(x).argmax(1) + 1) % 4
    adv, rec = msae(net, x, target, sparsity={"audio": 0.25, "video": 0.1}, **FAST)
    n_a, n_v = x["audio"][0].numel(), x["video"][0].numel()
    assert adv["speaker"] is x["speaker"]
    assert set(adv) == set(x)
    for r in rec:
        assert r["sparsity"] == {"audio": math.floor(0.25 * n_a) / n_a, "video": math.floor(0.1 * n_v) / n_v}
        assert r["changed"]["audio"] <= r["sparsity"]["audio"] and r["changed"]["video"] <= r["sparsity"]["video"]
        assert r["iterations"] == 12 and isinstance(r["success"], bool)
    ch_a = (adv["audio"] != x["audio"]).flatten(1).sum(1)
    ch_v = (adv["video"] != x["video"]).flatten(1).sum(1)
    assert (ch_a <= math.floor(0.25 * n_a)).all() and (ch_v <= math.floor(0.1 * n_v)).all()
    assert (ch_a > 0).all() and (ch_v > 0).all()  # each modality is attacked with its own mask
    assert adv["audio"].abs().max() <= 1 and adv["video"].min() >= 0 and adv["video"].max() <= 1


def test_only_named_modalities_change():
    net = _net()
    x = net.example_inputs(2)
    target = (net(x).argmax(1) + 1) % 4
    adv, rec = msae(net, x, target, sparsity={"audio": 0.3}, **FAST)
    assert torch.equal(adv["video"], x["video"])
    assert (adv["audio"] != x["audio"]).any()
    assert set(rec[0]["sparsity"]) == {"audio"}


def test_structured_masks_whole_frames():
    net = _net()
    x = net.example_inputs(2)
    target = (net(x).argmax(1) + 1) % 4
    adv, rec = msae(net, x, target, sparsity={"audio": 0.2, "video": 0.2},
                    structure={"audio": "frame", "video": "frame"}, audio_frame=160, **FAST)
    frames = x["video"].shape[1]
    touched = (adv["video"] != x["video"]).flatten(2).any(2)
    assert (touched.sum(1) <= math.floor(0.2 * frames)).all()
    # audio changes only inside whole 160-sample frames, at most floor(0.2 * 10) of them
    ch = (adv["audio"] != x["audio"]).reshape(2, 10, 160).any(2)
    assert (ch.sum(1) <= 2).all() and (ch.sum(1) > 0).all()
    assert rec[0]["sparsity"] == {"audio": 0.2, "video": math.floor(0.2 * frames) / frames}
    assert rec[0]["frames_touched"] <= 0.2


def test_dense_and_topk_and_l0_baselines():
    from audioadv.attacks.sparse import HardThreshold
    net = _net()
    x = net.example_inputs(2)
    target = (net(x).argmax(1) + 1) % 4
    dense, rec = msae(net, x, target, sparsity=1.0, warmup=4, rounds=0, finetune=4)
    assert rec[0]["sparsity"] == {"audio": 1.0, "video": 1.0} and rec[0]["iterations"] == 8
    # the dense baseline gets the same step budget as MSAE (warmup + rounds + finetune)
    _, rec = msae(net, x, target, sparsity=1.0, **FAST)
    _, rec_s = msae(net, x, target, sparsity=0.3, **FAST)
    assert rec[0]["iterations"] == rec_s[0]["iterations"] == 12
    top = topk_of(x, dense, {"audio": 0.1, "video": 0.1})
    assert ((top["audio"] != x["audio"]).sum(1) <= 160).all()
    # kept entries are the dense ones
    keep = top["audio"] != x["audio"]
    assert torch.equal(top["audio"][keep], dense["audio"][keep])
    hooks = {"audio": HardThreshold(0.9, ramp=0.0), "video": HardThreshold(0.9, ramp=0.0)}
    l0, _ = msae(net, x, target, sparsity=1.0, warmup=4, rounds=0, finetune=4, project=hooks)
    assert ((l0["audio"] != x["audio"]).sum(1) <= 160).all()


def test_naive_alternatives_in_the_uniform_call():
    from audioadv.attacks import l0_proximal, topk_dense
    net = _net()
    x = net.example_inputs(2)
    target = (net(x).argmax(1) + 1) % 4
    dense, _ = msae(net, x, target, sparsity=1.0, **FAST)
    top, rec = topk_dense(net, x, target, sparsity=0.1, **FAST)
    expected = topk_of(x, dense, {"audio": 0.1, "video": 0.1})
    assert all(torch.equal(top[k], expected[k]) for k in x)
    assert [r["success"] for r in rec] == (net(top).argmax(1) == target).tolist()
    l0, rec = l0_proximal(net, x, target, sparsity=0.1, **FAST)
    n_audio, n_video = x["audio"][0].numel(), x["video"][0].numel()
    assert ((l0["audio"] != x["audio"]).sum(1) <= 0.1 * n_audio).all()
    assert ((l0["video"] != x["video"]).flatten(1).sum(1) <= 0.1 * n_video).all()
    assert rec[0]["sparsity"] == {"audio": 0.1, "video": 0.1}
    with pytest.raises(ValueError, match="no structure"):
        l0_proximal(net, x, target, sparsity=0.1, structure={"video": "frame"}, **FAST)


def test_tensor_input_and_errors():
    torch.manual_seed(0)
    clf = models.create("logmel-cnn", num_classes=3, input_length=1600).eval()
    x = (0.1 * torch.randn(2, 1600)).clamp(-1, 1)
    adv, rec = msae(clf, x, torch.tensor([0, 1]), sparsity=0.2, **FAST)
    assert torch.is_tensor(adv) and adv.shape == x.shape
    assert ((adv != x).sum(1) <= 320).all() and rec[0]["sparsity"] == {"audio": 0.2}
    with pytest.raises(ValueError, match="sparsity"):
        msae(clf, x, torch.tensor([0, 1]), sparsity=1.5)
    with pytest.raises(ValueError, match="no tensor 'video'"):
        msae(clf, x, torch.tensor([0, 1]), sparsity={"video": 0.3})
    with pytest.raises(ValueError, match="base for 'audio'"):
        msae(clf, x, torch.tensor([0, 1]), base="ipc")
    with pytest.raises(ValueError, match=r"\[-1"):
        msae(clf, x * 20, torch.tensor([0, 1]))


def test_ctc_recogniser_mask_and_run_base():
    from audioadv.models.av import AVRecognizer
    torch.manual_seed(0)
    rec_model = AVRecognizer(size=16, channels=16, hidden=16, n_mels=16).eval()
    x = rec_model.example_inputs(2, seconds=0.4)
    lengths = torch.tensor([6400, 4800])
    for base in ("cw", "ipc", "imperceptible"):
        adv, recs = msae(rec_model, x, ["yes", "no"], base={"audio": base, "video": "cw"}, lengths=lengths,
                         sparsity={"audio": 0.1, "video": 0.2}, warmup=2, rounds=3, finetune=2)
        assert recs[1]["sparsity"]["audio"] == math.floor(0.1 * 4800) / 4800
        assert (adv["audio"][1, 4800:] == x["audio"][1, 4800:]).all()  # nothing beyond the utterance
        assert ((adv["audio"] != x["audio"]).sum(1) <= torch.floor(0.1 * lengths)).all()
    adv, recs = run_base("cw", rec_model, x, ["yes", "no"], lengths=lengths, max_iter=2)
    assert torch.equal(adv["video"], x["video"]) and len(recs) == 2 and "success" in recs[0]


def test_bar_default_targeted_30_percent_per_modality():
    torch.manual_seed(0)
    net = models.create("av-commands", num_classes=10).eval()
    x = net.example_inputs(1)
    target = (net(x).argmax(1) + 1) % 10
    adv, rec = msae(net, x, target, sparsity={"audio": 0.3, "video": 0.3})
    for k in ("audio", "video"):
        changed = (adv[k] != x[k]).flatten(1).float().mean(1)
        assert (changed <= 0.3).all(), (k, changed)
        assert rec[0]["sparsity"][k] == pytest.approx(0.3, abs=1e-9)
