"""Universal perturbations (Abdoli et al.): loss terms, tanh mapping, both crafting methods and the search over c on
a tiny model trained in the test, stopping rules, resuming from a checkpoint, evaluation helpers, the z-test, the
CLI."""
import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from _uap_tiny import SR, T, tones, trained_model

from audioadv.attacks import universal as U
from audioadv.attacks.universal_eval import evaluate, per_example, transfer_matrix, two_proportion_ztest
from audioadv.reporting import format_matrix, plot_curve

# Algorithm 1 alone, without the loudness budget or the patience stop, for the tests of the method itself.
PLAIN = dict(min_snr=None, patience=None)


@pytest.fixture(scope="module")
def tiny():
    model, (xtr, ytr), (xte, yte) = trained_model()
    return model, (xtr[:160], ytr[:160]), (xte, yte)


# ------------------------------------------------------------------ loss terms and mapping
def test_penalty_loss_hand_checked():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.5, 2.0, 1.0]])
    vp = torch.full((100,), 0.1)                       # rms 0.1 -> SPL -20 dB
    # untargeted (Eq. 11): G = f_y - max_{j != y} f_j, floored at -kappa
    loss, spl, G = U.penalty_loss(logits, torch.tensor([0, 0]), vp, targeted=False, c=0.5, kappa=40)
    assert spl.item() == pytest.approx(-20.0, abs=1e-4)
    assert G.tolist() == pytest.approx([2.0, -1.5])
    assert loss.item() == pytest.approx(-20.0 + 0.5 * 0.25, abs=1e-4)
    _, _, G = U.penalty_loss(logits, torch.tensor([0, 0]), vp, targeted=False, c=0.5, kappa=1.0)
    assert G.tolist() == pytest.approx([2.0, -1.0])
    # targeted (Eq. 10): G = max_{j != t} f_j - f_t
    _, _, G = U.penalty_loss(logits, torch.tensor([2, 2]), vp, targeted=True, c=0.15, kappa=10)
    assert G.tolist() == pytest.approx([3.0, 1.0])
    _, _, G = U.penalty_loss(logits, torch.tensor([0, 1]), vp, targeted=True, c=0.15, kappa=0.5)
    assert G.tolist() == pytest.approx([-0.5, -0.5])


def test_tanh_mapping_round_trips_and_matches_paper_in_unit_range():
    eps = 1e-7
    x = torch.linspace(-1, 1, 101)
    xp = U.to_tanh_space(x, eps)
    assert torch.isfinite(xp).all()
    assert torch.allclose(U.from_tanh_space(xp), x, atol=1e-6)
    v = torch.linspace(-0.5, 0.5, 11)
    vp = torch.atanh(v.double() * (1 - eps)).float()
    assert torch.allclose(U.perturbation_from_tanh(vp, eps), v, atol=1e-6)
    # the paper's Eqs. 7-8 on u = (x + 1) / 2 in [0, 1], mapped back to [-1, 1]
    u = (x.double() + 1) / 2
    vpp = torch.randn(101, dtype=torch.float64) * 0.1
    xpp = torch.atanh((2 * u - 1) * (1 - eps))
    w = 0.5 * (torch.tanh(xpp + vpp) + 1)                        # Eq. 7
    assert torch.allclose(2 * w - 1, U.from_tanh_space(xp.double(), vpp), atol=1e-6)
    v01 = (torch.tanh(vpp) + 1 - eps) / (2 - 2 * eps)           # Eq. 8
    assert torch.allclose(2 * v01 - 1, U.perturbation_from_tanh(vpp, eps), atol=1e-9)
    # the SPL argument of Eq. 10, 1/2 ln(w / (1 - w)) - x', is v' itself
    assert torch.allclose(0.5 * torch.log(w / (1 - w)) - xpp, vpp, atol=1e-5)


def test_projection():
    v = torch.tensor([3.0, -4.0])
    assert torch.allclose(U.project(v, 2, 1.0), torch.tensor([0.6, -0.8]))
    assert torch.allclose(U.project(v, math.inf, 1.0), torch.tensor([1.0, -1.0]))
    assert torch.equal(U.project(v, 2, None), v)
    with pytest.raises(ValueError):
        U.project(v, 1, 1.0)


# ------------------------------------------------------------------ the two methods
def _random_noise_rate(model, v, x, ref, target=None):
    """Fooling rate of random noise with v's l2 norm (a perturbation that is not adversarial)."""
    n = torch.randn(v.shape, generator=torch.Generator().manual_seed(3))
    n = n / n.norm() * v.norm()
    return U.success_rate(model, x, n, ref, target=target)


def test_penalty_untargeted_and_targeted(tiny):
    model, craft, (xte, yte) = tiny
    ref = U.predict(model, xte)
    # the tiny model's logits are small: c and lr larger than the paper's
    v, hist = U.penalty(model, craft, c=20, kappa=5, lr=0.03, max_iter=60, seed=0, **PLAIN)
    m = evaluate(model, v, (xte, yte))
    # a 4-tone task caps untargeted universal fooling near 0.75 (the class whose tone v carries keeps it)
    assert m["success_rate"] >= 0.68 and m["success_rate"] >= _random_noise_rate(model, v, xte, ref) + 0.3
    assert len(hist) == 60 and "success_rate" in hist[-1] and "stop" not in hist[-1] and v.shape == (T,)
    v, hist = U.penalty(model, craft, targeted=2, c=20, kappa=5, lr=0.03, max_iter=60, seed=0, **PLAIN)
    m = evaluate(model, v, (xte, yte), targeted=2)
    assert hist[-1]["success_rate"] >= 0.9 and hist[-1]["stop"] == "goal" and len(hist) < 60   # stopped at 1 - delta
    assert m["success_rate"] >= 0.85 and m["n_eval"] == int((yte != 2).sum())
    assert _random_noise_rate(model, v, xte[yte != 2], None, target=2) < 0.5
    v2, hist2 = U.penalty(model, craft, targeted=2, c=20, kappa=5, lr=0.03, max_iter=60, seed=0, **PLAIN)
    assert torch.equal(v, v2) and hist == hist2                  # same seed, same numbers
    assert hist[0]["c"] == 20 and hist[0]["kappa"] == 5 and hist[0]["xi"] is None


def test_iterative_untargeted_and_targeted(tiny):
    model, craft, (xte, yte) = tiny
    ref = U.predict(model, xte)
    kw = dict(attack_kwargs={"steps": 30, "init_norm": 0.5}, batch_size=4, max_passes=4, seed=0, progress=False)
    v, hist = U.iterative(model, craft, **kw)
    assert v.abs().max() <= 0.2 + 1e-6                           # l_inf ball, paper's xi untargeted
    m = evaluate(model, v, (xte, yte))
    assert m["success_rate"] >= 0.65 and m["success_rate"] >= _random_noise_rate(model, v, xte, ref) + 0.3
    v, hist = U.iterative(model, craft, targeted=3, **kw)
    assert v.abs().max() <= 0.12 + 1e-6
    assert evaluate(model, v, (xte, yte), targeted=3)["success_rate"] >= 0.8
    v, _ = U.iterative(model, craft, targeted=3, attack="deepfool", batch_size=4, max_passes=2, progress=False)
    assert evaluate(model, v, (xte, yte), targeted=3)["success_rate"] >= 0.6


def test_single_sample_mode_runs(tiny):
    """Table 3 setting: one crafting example per class, evaluated on the whole test set."""
    model, (x, y), (xte, yte) = tiny
    idx = torch.stack([(y == c).nonzero()[0, 0] for c in range(4)])
    v, hist = U.penalty(model, (x[idx], y[idx]), c=20, kappa=20, lr=0.03, max_iter=19, **PLAIN)
    assert len(hist) == 19                                # 3 of 4 points is below 1 - delta: runs all 19
    assert evaluate(model, v, (xte, yte))["success_rate"] >= 0.6


def test_bad_arguments(tiny, tmp_path):
    model, craft, _ = tiny
    with pytest.raises(ValueError, match="out of range"):
        U.penalty(model, craft, targeted=7, max_iter=1)
    with pytest.raises(ValueError, match="patience"):
        U.penalty(model, craft, patience=0)
    with pytest.raises(ValueError, match="inner attack"):
        U.iterative(model, craft, attack="fgsm", max_passes=1)
    with pytest.raises(ValueError, match="samples"):
        evaluate(model, torch.zeros(10), craft)
    bad = tmp_path / "state"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable crafting checkpoint"):
        U.penalty(model, craft, max_iter=1, checkpoint=bad)


# ------------------------------------------------------------------ loudness budget, stopping rules
def test_min_snr_keeps_the_mean_crafting_snr_at_the_budget(tiny):
    """min_snr=S: v' is projected onto the l2 ball with radius sqrt(T) 10^((mean_i 20 log10 P(x_i) - S) / 20), so the
    mean SNR (Eq. 14) over the crafting points (targeted: outside the target) is >= S; with a large c v sits on the
    ball and is then exactly as loud as the budget allows."""
    model, (x, y), _ = tiny
    kw = dict(c=1e3, lr=0.03, max_iter=15, seed=0, patience=None)
    for t, keep in ((None, torch.ones_like(y, dtype=torch.bool)), (2, y != 2)):
        for budget in (5.0, 15.0):
            v, h = U.penalty(model, (x, y), targeted=t, min_snr=budget, **kw)
            level = 10 * torch.log10(x[keep].double().pow(2).mean(1))
            xi = math.sqrt(x.shape[1]) * 10 ** ((float(level.mean()) - budget) / 20)
            assert h[0]["xi"] == pytest.approx(xi, rel=1e-6) == U.snr_radius(x[keep], budget)
            assert float(v.norm()) <= xi / (1 - U.EPS) + 1e-4
            snr = evaluate(model, v, (x, y), targeted=t)["mean_snr"]
            assert budget - 1e-3 <= snr <= budget + 0.05                  # on the ball, not inside it
    loose = evaluate(model, U.penalty(model, (x, y), min_snr=5.0, **kw)[0], (x, y))["success_rate"]
    tight = evaluate(model, U.penalty(model, (x, y), min_snr=15.0, **kw)[0], (x, y))["success_rate"]
    assert loose > 0.4 > 0.1 > tight                                      # a quieter budget fools fewer clips


def test_patience_stops_a_run_that_no_longer_improves(tiny):
    """Inside a tight budget the success plateaus below 1 - delta: patience=P stops the run P iterations after the
    last improvement of the mini-batch estimate (mean over one pass through the crafting points), with one full
    check; the run is the patience=None run cut there."""
    model, craft, _ = tiny
    kw = dict(c=1e3, lr=0.03, max_iter=80, seed=0, min_snr=12.0)
    v_all, h_all = U.penalty(model, craft, patience=None, **kw)
    v, h = U.penalty(model, craft, patience=6, **kw)
    assert len(h_all) == 80 and "stop" not in h_all[-1]
    k = len(h)
    assert 6 < k < 80 and h[-1]["stop"] == "patience" and h[-1]["success_rate"] < 0.9
    strip = lambda r: {n: x for n, x in r.items() if n not in ("success_rate", "linf", "l2", "stop")}  # noqa: E731
    assert [strip(r) for r in h] == [strip(r) for r in h_all[:k]]
    window = math.ceil(len(craft[1]) / 100)
    est = [r["batch_success"] for r in h]
    smooth = [sum(est[max(0, i - window + 1):i + 1]) / len(est[max(0, i - window + 1):i + 1]) for i in range(k)]
    best = smooth.index(max(smooth))                                     # the last improvement: first at the maximum
    assert k - 1 - best == 6
    assert U.success_rate(model, craft[0], v, U.predict(model, craft[0])) == pytest.approx(h[-1]["success_rate"])


def test_cheap_stopping_rule_checks_rarely_and_stops_exactly(tiny):
    """The full crafting-set check of Eq. 3 runs only when the mini-batch estimate is near the goal (and at the end);
    the stop is decided by the full check, never by the estimate."""
    model, craft, _ = tiny
    v, h = U.penalty(model, craft, targeted=3, c=20, kappa=5, lr=0.01, max_iter=60, seed=1, **PLAIN)
    checks = [r for r in h if "success_rate" in r]
    assert len(checks) < len(h) / 2
    assert all(r["batch_success"] >= 0.9 - U.CHECK_MARGIN for r in checks[:-1])
    assert all(r["success_rate"] < 0.9 for r in checks[:-1]) and h[-1]["stop"] == "goal"
    x, y = craft
    assert U.success_rate(model, x[y != 3], v, None, target=3) == pytest.approx(h[-1]["success_rate"])


# ------------------------------------------------------------------ the search over c
def test_collapse_is_detected_and_c_escalated(tiny):
    """The paper's c = 0.2 lets v collapse to 0 on this model; penalty_search detects the collapse (SPL 6 dB below its
    peak while the batch success is low), restarts from v' = 0 with 3 c and reaches the target. After each escalation
    the run is exactly penalty() with the raised c on the iterations left."""
    model, craft, (xte, yte) = tiny
    kw = dict(targeted=2, kappa=5, lr=0.03, seed=0, **PLAIN)
    v0, h0 = U.penalty(model, craft, c=0.2, max_iter=40, **kw)
    assert len(h0) == 40 and h0[-1]["success_rate"] < 0.3 and all(r["c"] == 0.2 for r in h0)
    assert h0[-1]["spl"] < max(r["spl"] for r in h0) - 6              # v shrank: the collapse
    v1, h1 = U.penalty_search(model, craft, c=0.2, max_iter=40, **kw)
    ups = [i for i, r in enumerate(h1) if "escalated_to" in r]
    assert ups and [r["iter"] for r in h1] == list(range(1, len(h1) + 1))
    first = h1[ups[0]]
    assert first["batch_success"] < 0.9 and first["spl"] < max(r["spl"] for r in h1[:ups[0] + 1]) - 6
    assert h1[-1]["c"] == pytest.approx(0.2 * 3 ** len(ups)) and h1[-1]["stop"] == "goal" and len(h1) < 40
    assert h1[ups[-1] + 1]["spl"] == -math.inf                        # v' = 0 again
    c, used = h1[-1]["c"], ups[-1] + 1
    v2, h2 = U.penalty(model, craft, c=c, max_iter=40 - used, **kw)
    assert torch.equal(v1, v2) and h1[used:] == [{**r, "iter": r["iter"] + used} for r in h2]
    assert evaluate(model, v1, (xte, yte), targeted=2)["success_rate"] >= 0.85
    # no escalation allowed: penalty() itself; c=None starts at the paper's value for the mode
    v3, h3 = U.penalty_search(model, craft, c=0.2, max_escalations=0, max_iter=40, **kw)
    assert torch.equal(v3, v0) and h3 == h0
    _, h4 = U.penalty_search(model, craft, c=None, max_iter=10, **kw)
    assert h4[0]["c"] == U.PENALTY_C[1]
    _, h5 = U.craft("penalty", model, craft, c=0.2, max_iter=40, **kw)
    assert h5 == h1


def test_dict_inputs(tiny):
    from _uap_tiny import DictNet

    model, (x, y), _ = tiny
    gain = torch.ones(len(x))
    gain[::2] = 0.5
    dmodel = DictNet(model)
    inputs = {"audio": x, "gain": gain}
    # the shared helpers slice and perturb the named entry only
    v = torch.full((T,), 0.01)
    assert torch.equal(U.apply(v, inputs)["gain"], gain) and torch.allclose(U.apply(v, inputs)["audio"], U.apply(v, x))
    ref = U.predict(dmodel, inputs, batch_size=7)
    assert torch.equal(ref, model(x * gain[:, None]).argmax(1))
    assert U.success_rate(dmodel, inputs, v, ref, batch_size=7) == U.success_rate(
        dmodel, {"audio": x, "gain": gain}, v, ref)
    kw = dict(targeted=2, c=20, kappa=5, lr=0.03, max_iter=40, seed=0, **PLAIN)
    vd, hd = U.penalty(dmodel, (inputs, y), **kw)
    assert hd[-1]["success_rate"] >= 0.9
    assert U.success_rate(dmodel, U.take(inputs, y != 2), vd, None, target=2) == pytest.approx(hd[-1]["success_rate"])
    # a single-entry dict under another name, named explicitly or found as the only entry; same v as a tensor
    wmodel = DictNet(model, key="wave")
    v_t, _ = U.penalty(model, (x, y), **kw)
    v_k, _ = U.penalty(wmodel, ({"wave": x}, y), key="wave", **kw)
    v_1, _ = U.penalty(wmodel, [({"wave": x[:80]}, y[:80]), ({"wave": x[80:]}, y[80:])], **kw)
    assert torch.allclose(v_t, v_k) and torch.allclose(v_t, v_1)
    with pytest.raises(ValueError, match="key="):
        U.penalty(dmodel, ({"a": x, "b": x}, y), max_iter=1)
    with pytest.raises(ValueError, match="not in the inputs"):
        U.apply(v, inputs, key="video")


# ------------------------------------------------------------------ resuming
def _stop_after(k: int, field: str = "iter"):
    def callback(v, rec):
        if rec[field] == k:
            raise KeyboardInterrupt
    return callback


@pytest.mark.parametrize("fn, kw, k", [
    (U.penalty, dict(c=20, kappa=5, lr=0.03, max_iter=40, min_snr=8.0, patience=5), 7),
    (U.penalty, dict(targeted=3, c=20, kappa=5, lr=0.01, max_iter=60, seed=1, **PLAIN), 8),
    # penalty_search: killed before the first escalation, and after two (the third run resumes from its own save)
    (U.penalty_search, dict(targeted=2, c=0.2, kappa=5, lr=0.03, max_iter=40, **PLAIN), 3),
    (U.penalty_search, dict(targeted=2, c=0.2, kappa=5, lr=0.03, max_iter=40, **PLAIN), 13),
], ids=["penalty-budget-patience", "penalty-targeted", "search-before-escalation", "search-after-escalation"])
def test_killed_and_resumed_run_is_bit_identical(tiny, tmp_path, fn, kw, k):
    model, craft, _ = tiny
    v0, h0 = fn(model, craft, **kw)
    assert len(h0) > k
    state = tmp_path / "state"
    with pytest.raises(KeyboardInterrupt):
        fn(model, craft, checkpoint=state, callback=_stop_after(k), **kw)
    assert (state.exists() or Path(f"{state}.run").exists()) == (k >= U.SAVE_EVERY)     # else it starts over
    v1, h1 = fn(model, craft, checkpoint=state, **kw)
    assert torch.equal(v0, v1) and h1 == h0
    v2, h2 = fn(model, craft, checkpoint=state, callback=_stop_after(1), **kw)   # finished: returned from the file
    assert torch.equal(v0, v2) and h2 == h0
    if fn is U.penalty:
        with pytest.raises(ValueError, match="another run .*c 20.0 there, 21.0 here"):
            fn(model, craft, checkpoint=state, **{**kw, "c": 21})
        with pytest.raises(ValueError, match="another run .*data"):
            fn(model, (craft[0][:-1], craft[1][:-1]), checkpoint=state, **kw)


def test_penalty_state_file_is_safetensors_with_json(tiny, tmp_path):
    from safetensors import safe_open

    model, craft, _ = tiny
    state = tmp_path / "state"
    with pytest.raises(KeyboardInterrupt):
        U.penalty(model, craft, c=20, lr=0.03, max_iter=30, checkpoint=state, callback=_stop_after(U.SAVE_EVERY + 1))
    with safe_open(str(state), framework="pt") as f:
        assert set(f.keys()) == {"vp", "order", "rng", "exp_avg", "exp_avg_sq"}
        meta = json.loads(f.metadata()["state"])
    assert meta["iter"] == U.SAVE_EVERY and len(meta["history"]) == U.SAVE_EVERY and meta["adam_step"] == U.SAVE_EVERY
    assert not list(tmp_path.glob("*.tmp"))


def test_iterative_resumes_mid_pass_and_between_passes(tiny, tmp_path):
    from audioadv.attacks import ddn

    model, (x, y), _ = tiny
    craft = (x[:60], y[:60])
    calls = {"n": 0, "stop": None}

    def inner(*a, **kw):                     # DDN that can be killed at its n-th call
        calls["n"] += 1
        if calls["n"] == calls["stop"]:
            raise KeyboardInterrupt
        return ddn(*a, **kw)

    kw = dict(attack=inner, attack_kwargs={"steps": 10, "init_norm": 0.5}, batch_size=2, max_passes=3, delta=0.01,
              progress=False)
    v0, h0 = U.iterative(model, craft, **kw)
    assert len(h0) == 3 and calls["n"] > U.SAVE_EVERY + 3
    for stop, callback in ((U.SAVE_EVERY + 3, None), (None, _stop_after(1, "pass"))):
        state = tmp_path / f"state{stop}"
        calls.update(n=0, stop=stop)
        with pytest.raises(KeyboardInterrupt):
            U.iterative(model, craft, checkpoint=state, callback=callback, **kw)
        calls["stop"] = None
        v1, h1 = U.iterative(model, craft, checkpoint=state, **kw)
        assert torch.equal(v0, v1) and h1 == h0


# ------------------------------------------------------------------ evaluation helpers
def test_evaluate_zero_and_known_perturbation(tiny):
    model, _, (xte, yte) = tiny
    m = evaluate(model, torch.zeros(T), (xte, yte))
    assert m["success_rate"] == 0 and m["n_infinite_snr"] == len(xte) and math.isnan(m["mean_snr"])
    assert m["accuracy_clean"] == m["accuracy_perturbed"] > 0.9
    v = torch.full((T,), 0.01)
    m = evaluate(model, v, (xte[:5], yte[:5]))
    x = xte[:5]
    snr = (10 * torch.log10(x.pow(2).mean(1) / 1e-4)).mean()
    assert m["mean_snr"] == pytest.approx(float(snr), abs=1e-3)
    dbx = (20 * math.log10(0.01) - 20 * torch.log10(x.abs().amax(1))).mean()
    assert m["mean_db_x"] == pytest.approx(float(dbx), abs=1e-3)



def test_transfer_matrix(tiny):
    model, _, (xte, yte) = tiny
    other, _, _ = trained_model(seed=5, steps=60)
    vs = {"a": torch.zeros(T), "b": torch.full((T,), 0.001)}
    mat = transfer_matrix(vs, {"m1": model, "m2": other}, (xte, yte))
    assert set(mat) == {"a", "b"} and set(mat["a"]) == {"m1", "m2"} and mat["a"]["m1"] == 0.0
    assert "| a |" in format_matrix(mat)



def test_ztest_on_paper_table5():
    # Appendix C, Table 5, 1D CNN Rand targeted: p_l = 0.672, p_h = 0.854, m = 874 test clips -> Z = -8.946
    m = 874
    r = two_proportion_ztest(round(0.672 * m), m, round(0.854 * m), m)
    assert r["z"] == pytest.approx(-8.946, abs=0.03)
    assert r["p_value_less"] < 1e-15
    # equal proportions: Z = 0, one-sided p = 0.5
    r = two_proportion_ztest(30, 100, 30, 100)
    assert r["z"] == 0 and r["p_value_less"] == pytest.approx(0.5) and r["p_value_two_sided"] == pytest.approx(1.0)
    # hand computed: 40/100 vs 55/100, p = 0.475, se = sqrt(.475*.525*.02) = 0.070623 -> Z = -2.1240
    r = two_proportion_ztest(40, 100, 55, 100)
    assert r["z"] == pytest.approx(-2.1240, abs=1e-3)
    assert r["p_value_less"] == pytest.approx(0.01683, abs=2e-4)
    with pytest.raises(ValueError):
        two_proportion_ztest(5, 4, 1, 4)



def test_plot_curve_writes_png(tmp_path):
    rows = [{"n_points": n, "success_rate": s, "mean_snr": q, "method": m}
            for m in ("penalty", "iterative") for n, s, q in ((10, 0.3, 25.0), (100, 0.8, 22.0))]
    p = plot_curve(rows, "n_points", tmp_path / "fig.png", series_key="method", logx=True)
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        plot_curve([], "kappa", tmp_path / "x.png")



def test_per_example_rows_add_up_to_evaluate(tiny):
    """per_example: one row per clip, whose successes, SNRs and predictions give evaluate()'s figures; a targeted run's
    clips of the target class have success None; an unchanged clip has SNR None."""
    model, craft, (xte, yte) = tiny
    v, _ = U.penalty(model, craft, targeted=2, c=20, kappa=5, lr=0.03, max_iter=20, seed=0, **PLAIN)
    for t in (None, 2):
        m, rows = evaluate(model, v, (xte, yte), targeted=t), per_example(model, v, (xte, yte), targeted=t)
        assert len(rows) == m["n"] and sum(bool(r["success"]) for r in rows) == m["successes"]
        assert sum(r["success"] is not None for r in rows) == m["n_eval"]
        assert all((r["success"] is None) == (t is not None and r["label"] == t) for r in rows)
        assert np.mean([r["snr"] for r in rows if r["success"] is not None]) == pytest.approx(m["mean_snr"], abs=1e-4)
        assert np.mean([r["perturbed"] == r["label"] for r in rows]) == pytest.approx(m["accuracy_perturbed"])
    assert all(r["snr"] is None and r["db_x"] is None for r in per_example(model, torch.zeros_like(v), (xte, yte)))
    from audioadv.data.base import AudioDataset
    ds = AudioDataset(xte, yte, ["a", "b", "c", "d"], items=[{"path": f"{i}.wav", "index": 100 + i} for i in range(len(yte))])
    rows = per_example(model, v, ds)
    assert [r["index"] for r in rows] == list(range(len(yte)))           # the row's own index, not the metadata's
    assert rows[3]["item_index"] == 103 and rows[3]["path"] == "3.wav"


# ------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def fsdd_folder(tmp_path_factory):
    import soundfile as sf

    from audioadv.models import create, save_checkpoint

    tmp = tmp_path_factory.mktemp("cli")
    folder = tmp / "fsdd"
    folder.mkdir()
    x, y = tones(48, seed=9)
    for i, (w, lab) in enumerate(zip(x, y)):
        sf.write(folder / f"{int(lab)}_{chr(97 + i // 8)}_{i % 8}.wav", w.numpy(), SR)  # takes 0-4 test
    torch.manual_seed(0)
    model = create("cnn1d-rand", num_classes=10, input_length=T, sample_rate=SR)
    return folder, save_checkpoint(model, tmp / "ckpt")


def test_cli_universal_and_transfer(fsdd_folder, tmp_path, capsys):
    from audioadv.cli import main

    folder, ckpt = fsdd_folder
    out = tmp_path / "uap"
    rc = main(["universal", str(ckpt), "--data", f"fsdd:{folder}", "--method", "penalty", "--out", str(out),
               "--max-iter", "3", "--n-craft", "12", "--examples", "2", "--quiet", "--lr", "0.01"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 30 and metrics["iterations"] <= 3 and metrics["n_craft"] == 12
    # options left out take the library's defaults, recorded in the settings
    defaults = {k: p.default for fn in (U.penalty, U.penalty_search) for k, p in inspect.signature(fn).parameters.items()}
    assert metrics["settings"]["c"] == defaults["c"] == metrics["c_start"] and metrics["c_final"] >= metrics["c_start"]
    assert metrics["settings"]["min_snr"] == defaults["min_snr"] and metrics["settings"]["lr"] == 0.01
    assert metrics["settings"]["patience"] == defaults["patience"] and metrics["resumed"] is False
    assert metrics["craft"]["mean_snr"] >= defaults["min_snr"] - 1e-3 and metrics["xi"] > 0
    v = np.load(out / "v.npy")
    assert v.shape == (T,) and (out / "v.wav").exists() and len(list((out / "examples").glob("*.wav"))) == 4
    assert len((out / "history.jsonl").read_text().splitlines()) == metrics["iterations"]
    strict = lambda text: json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))  # noqa: E731
    history = [strict(l) for l in (out / "history.jsonl").read_text().splitlines()]
    assert history[0]["spl"] is None                     # SPL of v' = 0 is -inf: written as null
    rows = [strict(l) for l in (out / "per_example_test.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and sum(r["success"] for r in rows) == metrics["test"]["successes"]
    assert all(r["path"].endswith(".wav") and r["label_name"] == str(r["label"]) for r in rows)
    snrs = [r["snr"] for r in rows if r["snr"] is not None]
    assert np.mean(snrs) == pytest.approx(metrics["test"]["mean_snr"], abs=1e-4)
    rc = main(["universal", str(ckpt), "--data", f"fsdd:{folder}", "--method", "iterative", "--target", "3",
               "--out", str(tmp_path / "uap2"), "--max-passes", "1", "--n-craft", "6", "--quiet"])
    m2 = json.loads((tmp_path / "uap2" / "metrics.json").read_text())
    assert rc == 0 and m2["target"] == 3 and m2["settings"]["xi"] is None and m2["settings"]["max_passes"] == 1
    capsys.readouterr()
    assert main(["transfer", str(out), str(ckpt), "--data", f"fsdd:{folder}", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["matrix"]["ckpt"]["ckpt"] == pytest.approx(metrics["test"]["success_rate"])
    assert main(["universal", str(ckpt), "--data", f"fsdd:{folder}", "--target", "zebra", "--out",
                 str(tmp_path / "bad")]) == 2
    rc = main(["universal", str(ckpt), "--data", f"fsdd:{folder}", "--out", str(tmp_path / "u3"), "--max-iter", "3",
               "--n-craft", "12", "--examples", "0", "--quiet", "--lr", "0.01", "--min-snr", "none", "--patience", "off"])
    m3 = json.loads((tmp_path / "u3" / "metrics.json").read_text())
    assert rc == 0 and m3["settings"]["min_snr"] is None and m3["settings"]["patience"] is None and m3["xi"] is None
    capsys.readouterr()
    assert main(["universal", str(ckpt), "--data", f"fsdd:{folder}", "--method", "iterative", "--min-snr", "12",
                 "--out", str(tmp_path / "bad2")]) == 2
    assert "--min-snr is a penalty-method option" in capsys.readouterr().err
    assert main(["universal", str(ckpt), "--data", f"fsdd:{folder}", "--xi", "0.3", "--out", str(tmp_path / "bad3")]) == 2
    assert "--xi is an iterative-method option" in capsys.readouterr().err and not (tmp_path / "bad3").exists()
    assert main(["universal", str(ckpt), "--data", f"fsdd:{folder}", "--inner-batch", "1", "--out", str(tmp_path / "b4")]) == 2
    assert "--inner-batch is an iterative-method option" in capsys.readouterr().err


def test_cli_argparse_repeats_no_library_default():
    from audioadv.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["universal"]
    crafting = [a for a in sub._actions if a.dest in ("delta", "seed", "c", "c_factor", "kappa", "lr", "max_iter",
                                                        "batch_size", "min_snr", "patience", "xi", "p", "inner",
                                                        "max_passes", "inner_batch", "aggregate")]
    assert len(crafting) == 16 and all(a.default is None for a in crafting)


def test_cli_resumes_a_killed_run(fsdd_folder, tmp_path, monkeypatch):
    """A run killed after a few iterations leaves OUT/state; the rerun resumes from it and writes the same v and
    history as an uninterrupted run."""
    from audioadv.cli import main

    folder, ckpt = fsdd_folder
    args = ["--data", f"fsdd:{folder}", "--max-iter", "12", "--n-craft", "12", "--examples", "0", "--quiet",
            "--lr", "0.01", "--min-snr", "none", "--patience", "none", "--c", "30"]
    assert main(["universal", str(ckpt), "--out", str(tmp_path / "whole"), *args]) == 0
    calls = {"n": 0}
    loss = U.penalty_loss

    def killed_at_8(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return loss(*a, **kw)

    out = tmp_path / "killed"
    monkeypatch.setattr(U, "penalty_loss", killed_at_8)
    assert main(["universal", str(ckpt), "--out", str(out), *args]) == 130
    assert ((out / "state").exists() or (out / "state.run").exists()) and not (out / "metrics.json").exists()
    monkeypatch.setattr(U, "penalty_loss", loss)
    assert main(["universal", str(ckpt), "--out", str(out), *args]) == 0
    assert json.loads((out / "metrics.json").read_text())["resumed"] is True and not list(out.glob("state*"))
    assert np.array_equal(np.load(out / "v.npy"), np.load(tmp_path / "whole" / "v.npy"))
    assert (out / "history.jsonl").read_text() == (tmp_path / "whole" / "history.jsonl").read_text()
    assert main(["universal", str(ckpt), "--out", str(out), *args[:-1], "40"]) == 0      # a result exists: kept
    assert main(["universal", str(ckpt), "--out", str(out), *args[:-1], "40", "--force"]) == 0
    assert json.loads((out / "metrics.json").read_text())["c_start"] == 40

