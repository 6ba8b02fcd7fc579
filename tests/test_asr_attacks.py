"""Speech-to-text attacks (CW, IPC, Imperceptible) and the l0 proximal (sparse) wrapper, on a
tiny CTC recogniser trained in the test on a toy tone-letter task (tests/_asr_toy.py)."""
import pytest
import torch

from _asr_toy import batch, train_toy
import itertools

from audioadv.attacks.sparse import HardThreshold, chain, hard_threshold, joint_score, sparse
from audioadv.attacks.cw_ctc import cw_ctc
from audioadv.attacks.imperceptible import imperceptible
from audioadv.attacks.ipc import ipc
from audioadv.asr_report import asr_report
from audioadv.models.asr import transcribe
from audioadv.signal.masking import masking_loss, masking_threshold

SRC, TGT = ["abcd", "dcb"], ["abdd", "dab"]


@pytest.fixture(scope="module")
def toy():
    model = train_toy()
    x, lengths = batch(SRC, seed=9)
    assert transcribe(model, x, lengths) == SRC  # the recogniser works before it is attacked
    return model, x, lengths


def test_hard_threshold_keeps_exactly_k():
    torch.manual_seed(0)
    d = torch.randn(3, 100)
    out = hard_threshold(d, torch.tensor([10, 0, 100]))
    assert (out != 0).sum(1).tolist() == [10, 0, 100]
    kept = out[0] != 0
    assert d[0].abs()[kept].min() >= d[0].abs()[~kept].max()           # the largest ones
    assert torch.equal(out[0][kept], d[0][kept])                        # unchanged values
    # ties and lengths: exactly k among the first lengths[b] samples, nothing after
    t = torch.ones(2, 50)
    out = hard_threshold(t, 7, lengths=torch.tensor([20, 50]))
    assert (out != 0).sum(1).tolist() == [7, 7] and out[0, 20:].abs().sum() == 0


def test_joint_projection_onto_l0_and_box():
    # clipped to the bound 0.2, the first four samples tie; the projection keeps those the step
    # pushed furthest out (raw 0.5 and -0.3), not the earliest
    raw = torch.tensor([[0.2, 0.25, -0.3, 0.5, 0.05]])
    clipped = raw.clamp(-0.2, 0.2)
    assert hard_threshold(clipped, 2).nonzero()[:, 1].tolist() == [0, 1]
    out = hard_threshold(clipped, 2, score=joint_score(raw, clipped))
    assert out.nonzero()[:, 1].tolist() == [2, 3] and torch.equal(out[0, 2:4], clipped[0, 2:4])
    # per-sample bounds (IPC): brute force over all supports, the scored one is the closest point
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        raw = torch.randn(1, 7, generator=g)
        b = torch.rand(1, 7, generator=g) * (torch.rand(1, 7, generator=g) < 0.7)  # some bounds 0
        clipped = torch.maximum(torch.minimum(raw, b), -b)
        out = hard_threshold(clipped, 3, score=joint_score(raw, clipped))
        best = min(((raw - clipped * torch.isin(torch.arange(7), torch.tensor(s))).pow(2).sum().item())
                   for s in itertools.combinations(range(7), 3))
        assert (raw - out).pow(2).sum().item() == pytest.approx(best, abs=1e-6)
        assert ((out != 0) & (b == 0)).sum() == 0


def test_joint_projection_in_the_units_of_a_per_sample_box():
    # IPC's box |d_i| <= b_i: with `bound`, the projection is the closest point in the box's own
    # units (distance sum ((raw - out) / b)^2), checked by brute force over all supports
    g = torch.Generator().manual_seed(5)
    for _ in range(20):
        raw = torch.randn(1, 7, generator=g) * 0.1
        b = torch.rand(1, 7, generator=g) * (torch.rand(1, 7, generator=g) < 0.7)
        clipped = torch.maximum(torch.minimum(raw, b), -b)
        out = hard_threshold(clipped, 3, score=joint_score(raw, clipped, bound=b))
        pos = b > 0

        def dist(o):
            return (((raw - o) / b.clamp_min(1e-12)) ** 2)[pos].sum().item()
        best = min(dist(clipped * torch.isin(torch.arange(7), torch.tensor(s)))
                   for s in itertools.combinations(range(7), 3))
        assert dist(out) == pytest.approx(best, rel=1e-5)
        assert ((out != 0) & (b == 0)).sum() == 0
    # a loud sample just at its bound ranks below a quiet one pushed far past its own; the plain
    # Euclidean gain ranks the other way (it would keep the loud samples)
    raw, b = torch.tensor([[0.51, 0.003]]), torch.tensor([[0.5, 0.001]])
    clipped = torch.maximum(torch.minimum(raw, b), -b)
    assert hard_threshold(clipped, 1, score=joint_score(raw, clipped, bound=b)).nonzero()[:, 1].tolist() == [1]
    assert hard_threshold(clipped, 1, score=joint_score(raw, clipped)).nonzero()[:, 1].tolist() == [0]
    # a uniform bound (CW's tau) changes no ranking; a bound tiny enough to overflow the ratio is finite
    raw = torch.randn(3, 50, generator=g) * 0.01
    clipped = raw.clamp(-0.005, 0.005)
    assert torch.equal(joint_score(raw, clipped, bound=torch.full_like(raw, 0.005)).argsort(),
                       joint_score(raw, clipped).argsort())
    tiny = torch.full((1, 2), 1e-44)
    assert torch.isfinite(joint_score(torch.ones(1, 2), tiny, bound=tiny)).all()


def test_sparse_ipc_ranks_in_its_bounds_units_cw_does_not(toy, monkeypatch):
    import audioadv.attacks._ctc as ctc
    model, x, lengths = toy
    seen = []

    def spy(raw, clipped, metric=None, bound=None):
        seen.append(bound)
        return joint_score(raw, clipped, metric, bound=bound)
    monkeypatch.setattr(ctc, "joint_score", spy)
    sparse(ipc, 0.4)(model, x, TGT, lengths=lengths, ratio=0.5, lr=3e-3, max_iter=3)
    assert len(seen) == 3 and all(b is not None for b in seen)
    n = min(x.shape[1], seen[0].shape[1])
    assert torch.allclose(seen[0][:, :n], 0.5 * x[:, :n].abs())   # IPC's r |x_i|
    seen.clear()
    sparse(cw_ctc, 0.4)(model, x, TGT, lengths=lengths, tau=0.2, lr=3e-3, max_iter=3)
    assert len(seen) == 3 and all(b is None for b in seen)


def test_schedule_ramps_to_the_target_sparsity():
    h = HardThreshold(0.4, ramp=0.3)
    assert h.sparsity_at(0, 100) == pytest.approx(0.4 / 30)
    assert h.sparsity_at(29, 100) == pytest.approx(0.4) and h.ready_step(100) == 29
    assert h.sparsity_at(99, 100) == pytest.approx(0.4)
    d = torch.randn(2, 1000)
    out = h(d, step=50, total=100, lengths=torch.tensor([1000, 500]))
    assert (out != 0).sum(1).tolist() == [600, 300]
    assert HardThreshold(0.5, ramp=0.0).sparsity_at(0, 10) == 0.5
    with pytest.raises(ValueError):
        HardThreshold(1.0)
    both = chain(lambda d, **k: d * 2, h)
    assert both.ready_step(100) == 29


def test_cw_reaches_target_within_its_bound(toy):
    model, x, lengths = toy
    adv, rec = cw_ctc(model, x, TGT, lengths=lengths, tau=0.2, lr=3e-3, max_iter=60)
    assert transcribe(model, adv, lengths) == TGT and all(r["success"] for r in rec)
    d = adv - x
    assert (d.abs().amax(1) <= 0.2 + 1e-6).all()
    assert d[1, int(lengths[1]):].abs().sum() == 0                      # padding untouched
    # tau shrank below its start on success, and the result respects the last successful bound
    assert all(r["bound"] < 0.2 for r in rec)
    rep = asr_report(model, x, adv, TGT, SRC, lengths, rec)
    assert all(r["success"] and r["cer_target"] == 0 and r["cer_original"] > 0 for r in rep)
    assert all(r["snr_db"] > 10 and r["db_x"] < 0 and 0 < r["l0"] <= 1 for r in rep)
    assert all(0 <= r["first_success"] <= r["last_success"] < r["iterations"] == 60 for r in rep)
    assert all(r["attack_success"] and r["seconds"] > 0 and r["loss"] == r["loss"] for r in rep)
    # stop_after: an utterance leaves the batch after that many successes
    adv2, rec2 = cw_ctc(model, x, TGT, lengths=lengths, tau=0.2, lr=3e-3, max_iter=60, stop_after=2)
    assert [r["successes"] for r in rec2] == [2, 2] and transcribe(model, adv2, lengths) == TGT
    assert all(r["iterations"] == r["last_success"] + 1 < 60 for r in rec2)


def test_patience_stops_once_the_bound_no_longer_shrinks(toy):
    model, x, lengths = toy
    adv, rec = cw_ctc(model, x, TGT, lengths=lengths, tau=0.2, lr=3e-3, max_iter=200, patience=5)
    assert transcribe(model, adv, lengths) == TGT
    # each utterance ran until 5 steps after its last success, not the whole budget
    assert all(r["iterations"] == r["last_success"] + 6 for r in rec)
    assert all(r["iterations"] < 200 for r in rec)
    assert all(p.requires_grad for p in model.parameters())  # weights unfrozen afterwards


def test_ipc_bound_holds_sample_by_sample(toy):
    model, x, lengths = toy
    adv, rec = ipc(model, x, TGT, lengths=lengths, ratio=1.0, lr=3e-3, max_iter=60)
    assert transcribe(model, adv, lengths) == TGT
    d = adv - x
    ratios = torch.tensor([r["bound"] for r in rec])
    assert (ratios < 1.0).all()                                         # shrunk on success
    assert (d.abs() <= 1.0 * x.abs() + 1e-7).all()                      # the initial bound, everywhere
    # the returned perturbation was found under a ratio at most 1/shrink of the final one
    assert (d.abs() <= (ratios / 0.9)[:, None] * x.abs() + 1e-7).all()


def test_sparse_wrapper_reaches_target_at_the_sparsity(toy):
    model, x, lengths = toy
    for attack, kw in ((cw_ctc, dict(tau=0.2)), (ipc, dict(ratio=1.0))):
        adv, rec = sparse(attack, 0.4, ramp=0.3)(model, x, TGT, lengths=lengths, lr=3e-3, max_iter=60, **kw)
        assert transcribe(model, adv, lengths) == TGT, attack.__name__
        nz = ((adv - x) != 0).sum(1)
        assert (nz <= torch.floor(0.6 * lengths)).all()
        assert all(r["first_success"] >= 18 for r in rec)               # only after the ramp (18 steps)
        if attack is ipc:
            assert ((adv - x).abs() <= x.abs() + 1e-7).all()


def test_imperceptible_reaches_target_and_lowers_the_masking_loss(toy):
    model, x, lengths = toy
    kw = dict(tau=0.2, lr_stage1=3e-3, max_iter_stage1=40)
    stage1, _ = cw_ctc(model, x, TGT, lengths=lengths, tau=0.2, lr=3e-3, max_iter=40, l2_weight=0.0)
    adv, rec = imperceptible(model, x, TGT, lengths=lengths, max_iter_stage2=40, lr_stage2=1e-3, **kw)
    assert transcribe(model, adv, lengths) == TGT and all(r["stage2_success"] for r in rec)
    theta, pmax = masking_threshold(x, lengths=lengths)
    before = masking_loss(stage1 - x, theta, pmax, lengths)
    after = masking_loss(adv - x, theta, pmax, lengths)
    assert (after < before).all()
    assert [r["masking_loss"] for r in rec] == pytest.approx(after.tolist(), rel=1e-5)


def test_imperceptible_stage2_convergence_stop(toy):
    # patience_stage2: an utterance that reached the target leaves stage 2 once its masking loss has
    # not fallen 1% below its best for that many steps; without it stage 2 runs its whole budget
    model, x, lengths = toy
    kw = dict(tau=0.2, lr_stage1=3e-3, max_iter_stage1=40, stop_after=1, max_iter_stage2=300, lr_stage2=1e-3)
    _, full = imperceptible(model, x, TGT, lengths=lengths, **kw)
    adv, early = imperceptible(model, x, TGT, lengths=lengths, patience_stage2=5, **kw)
    stage1_steps = [r["iterations"] - 300 for r in full]          # the full run spends exactly 300 in stage 2
    stage2_steps = [e["iterations"] - s1 for e, s1 in zip(early, stage1_steps)]
    assert all(r["stage2_success"] for r in early) and all(5 <= s < 300 for s in stage2_steps)
    assert transcribe(model, adv, lengths) == TGT
    with pytest.raises(ValueError, match="patience_stage2"):
        imperceptible(model, x, TGT, lengths=lengths, patience_stage2=0, **kw)


def test_sparse_wraps_pgd_on_a_classifier():
    from audioadv.attacks import pgd
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(400, 3))
    x = 0.1 * torch.randn(4, 400)
    y = model(x).argmax(1)
    adv = sparse(pgd, 0.5)(model, x, y, eps=0.05, steps=10)
    assert (((adv - x) != 0).sum(1) <= 200).all()
    dense = pgd(model, x, y, eps=0.05, steps=10)
    assert (((dense - x) != 0).sum(1) > 200).all()
