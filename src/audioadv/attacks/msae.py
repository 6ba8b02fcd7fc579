r"""MSAE: masked sparse adversarial examples for (audio-visual) speech models.

"Masked Sparse Adversarial Examples for Audio-Visual Speech Recognition" (MSAE; the copy in
`shared/papers` holds the abstract and demo page only, so the equations below are numbered here,
(M1)-(M8)): the perturbation of every modality is a binary selective mask times a dense
perturbation, x'_j = x_j + m_j * delta_j, and the masks are optimised with the lp-box ADMM of
Wu & Ghanem ("lp-Box ADMM: a versatile framework for integer programming in machine learning",
TPAMI 2019), which replaces the binary constraint by the intersection of a box and a sphere
(their lp-box equivalence with p = 2):

    (M1)  min_{m, delta}  c * L_adv(x + m * delta) + sum_j D_j(m_j * delta_j)
          s.t.  m_j in {0, 1}^{n_j},  1^T m_j = k_j = floor(s_j n_j)   for every modality j
    (M2)  {0, 1}^n = S_b cap S_p,  S_b = [0, 1]^n,  S_p = {m : ||m - 1/2||^2 = n / 4}   (Wu & Ghanem)

L_adv is the baseline's attack loss (CW hinge on logits for classifiers, Carlini & Wagner 2017
f_6; CTC loss of the target for recognisers, Carlini & Wagner 2018), D_j the baseline's
distortion term of modality j (CW: ||.||_2^2; IPC: ||.||_2^2 under |delta_i| <= r |x_i|;
Imperceptible: alpha * Qin et al.'s masking loss under |delta| <= tau) and s_j the fraction of the
n_j positions of modality j that may change. With auxiliary y1 in S_b, y2 in S_p, duals z1, z2,
z3 and penalties rho1 = rho2 = rho3 = rho, the augmented Lagrangian (cardinality written as
(1^T m - k) / sqrt(n), ours, so that one rho suits any n) is minimised by alternating, per
modality and example:

    (M3)  y1 <- P_b(m + z1 / rho1) = clip(m + z1 / rho1, 0, 1)
    (M4)  y2 <- P_p(m + z2 / rho2) = 1/2 + (sqrt(n) / 2) (v - 1/2) / ||v - 1/2||,  v = m + z2 / rho2
    (M5)  m  <- argmin_m  <g, m> + ||m - m_old||^2 / (2 eta) + <z1, m - y1> + rho1/2 ||m - y1||^2
                 + <z2, m - y2> + rho2/2 ||m - y2||^2 + z3 (1^T m - k)/sqrt(n) + rho3/2 ((1^T m - k)/sqrt(n))^2
          with g = grad_m of c * L_adv at (m_old, delta) normalised by its largest entry (linearised
          ADMM step; the solution is closed form: (a I + (rho3/n) 1 1^T) m = r, a = 1/eta + rho1 + rho2,
          m = (r - rho3 (1^T r) / (n (a + rho3)) 1) / a by Sherman-Morrison)
    (M6)  z1 <- z1 + rho1 (m - y1),  z2 <- z2 + rho2 (m - y2),  z3 <- z3 + rho3 (1^T m - k)/sqrt(n)
    (M7)  rho_i <- min(rho_growth * rho_i, rho_max)
    (M8)  delta <- Adam step on (M1) at the current m, then the baseline's box

g is the gradient of the attack term only (ours; `mask_gradient="objective"` uses all of (M1)):
the distortion term's gradient 2 m delta^2 pushes every mask entry down in proportion to the
perturbation's energy there, i.e. away from the positions the attack needs, while the
cardinality constraint already sets how many positions are used; the distortion is then
reduced by the fine-tuning. On the AV classifier (benchmarks/msae_eval.py, 6 clips, 30%) this
raised the audio SNR of MSAE from 15.5 to 26.0 dB and the video PSNR from 36.4 to 39.9 dB.

Schedule: `warmup` steps of (M8) with m = 1 (dense; the mask gradient g = c grad_x L_adv * delta
is zero while delta is), `rounds` ADMM iterations (M3)-(M8), then m is binarised by keeping its
k largest entries (exactly k ones; ties broken by position), delta is replaced by m * delta (the
perturbation the model saw at the kept positions) and fine-tuned with m fixed for `finetune`
steps. Successes are recorded in the fine-tuning phase only (binary mask); the least distorted
one is returned, else the last iterate. c: in the warm-up, the weight of every example that was
not adversarial in the last `adapt_every` steps is multiplied by `c_up`; in the fine-tuning phase
c follows CW's search over c, per example and online (ours; CW restarts the optimisation for
every c): every `adapt_every` steps an example that was adversarial in the window sets the upper
bound to its c, one that was not sets the lower bound, and c becomes the midpoint of the bounds,
or c / c_up (c * c_up) while no lower (upper) bound is known. The dense baseline (every sparsity
1) runs the same warmup + rounds + finetune steps; its mask is final from the start, so its
fine-tuning phase begins after the warm-up.

Structured masks (`structure=`): "sample" / "pixel" / "element" (every entry is a position),
or "frame": audio frames of `audio_frame` samples, or whole video frames (temporal masks).

`msae(model, inputs, targets, ...)` returns `(adv, records)`: adv of the type of `inputs` (a
tensor is treated as {"audio": tensor}; dict entries that are not attacked pass through
unchanged) and one record per example (success, realised sparsity per modality, fraction of
positions changed, l2, audio SNR, video PSNR, fraction of frames touched, iterations, first success,
final c). `sparsity=1` gives the dense baseline with the same loss, steps and optimiser (no mask);
`project=` takes per-modality projection hooks such as `attacks.sparse.HardThreshold` (the l0
proximal baseline). `run_base` calls the library's own speech-to-text attacks (cw_ctc, ipc,
imperceptible) as the dense baselines of recognisers.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..signal import snr as _snr
from . import _ctc
from ._util import ADAM_BETAS, ADAM_EPS, hinge, is_adversarial
from .cw import cw_l2
from .cw_ctc import cw_ctc
from .imperceptible import imperceptible
from .ipc import ipc
from .sparse import hard_threshold

RANGES = {"audio": (-1.0, 1.0), "video": (0.0, 1.0)}
UNITS = {"audio": "sample", "video": "pixel"}
PER_ENTRY = ("sample", "pixel", "element")
CTC_BASES = {"cw": cw_ctc, "ipc": ipc, "imperceptible": imperceptible}


def _default(fn, name):
    """The default of keyword `name` of a base attack (one place for every default)."""
    return inspect.signature(fn).parameters[name].default


def box_projection(v: torch.Tensor) -> torch.Tensor:
    """(M3): Euclidean projection onto the box [0, 1]^n."""
    return v.clamp(0.0, 1.0)


def sphere_projection(v: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(M4): projection of each row onto the sphere ||m - 1/2||^2 = n/4 (n = its valid entries;
    invalid entries are returned as 0). A row at the centre goes to the all-ones point."""
    valid = torch.ones_like(v, dtype=torch.bool) if valid is None else valid
    n = valid.sum(1, keepdim=True).to(v.dtype)
    u = (v - 0.5) * valid
    norm = u.norm(dim=1, keepdim=True)
    u = torch.where(norm > 0, u / norm.clamp_min(1e-30), valid.to(v.dtype) / n.clamp_min(1).sqrt())
    return (0.5 + n.sqrt() / 2 * u) * valid


@dataclass
class _Mod:
    """One attacked modality: clean x, the position layout of its mask, bounds and ADMM state."""

    key: str
    x: torch.Tensor
    unit: str
    frame: int
    lo: float
    hi: float
    valid: torch.Tensor = None       # (B, n) positions that exist (audio beyond its length does not)
    k: torch.Tensor = None            # (B,) ones of the final mask
    state: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.valid.shape[1]

    def expand(self, m: torch.Tensor) -> torch.Tensor:
        """Mask over positions (B, n) -> mask over the input's entries (B, ...)."""
        b, shape = self.x.shape[0], self.x.shape[1:]
        if self.unit in PER_ENTRY:
            return m.reshape(self.x.shape)
        if self.x.dim() == 2:  # frames of `frame` samples
            return m.repeat_interleave(self.frame, 1)[:, :shape[0]]
        return m.reshape(b, shape[0], *([1] * (len(shape) - 1))).expand(self.x.shape)


def _make_mod(key, x, unit, frame, lengths, rng):
    lo, hi = rng
    if unit not in (*PER_ENTRY, "frame"):
        raise ValueError(f"msae: structure of {key!r} must be one of {', '.join(PER_ENTRY)} or frame, not {unit!r}")
    b = x.shape[0]
    if unit == "frame" and x.dim() < 2:
        raise ValueError(f"msae: {key!r} has no frame axis (shape {tuple(x.shape)})")
    if unit in PER_ENTRY:
        n = x[0].numel()
        valid = torch.ones(b, n, dtype=torch.bool, device=x.device)
        if key == "audio" and lengths is not None and x.dim() == 2:
            valid = torch.arange(n, device=x.device)[None, :] < lengths[:, None]
    elif x.dim() == 2:
        n = math.ceil(x.shape[1] / frame)
        valid = torch.ones(b, n, dtype=torch.bool, device=x.device)
        if key == "audio" and lengths is not None:
            valid = torch.arange(n, device=x.device)[None, :] < ((lengths + frame - 1) // frame)[:, None]
    else:
        n = x.shape[1]
        valid = torch.ones(b, n, dtype=torch.bool, device=x.device)
    return _Mod(key, x, unit, frame, lo, hi, valid)


def attacked_modalities(inputs, sparsity) -> list[str]:
    """The keys of `sparsity` when it is a dict, else every "audio" / "video" entry (a tensor is the audio)."""
    if isinstance(sparsity, dict):
        return list(sparsity)
    return ["audio"] if torch.is_tensor(inputs) else [k for k in ("audio", "video") if k in inputs]


def _per_modality(value, keys, name, default=None):
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(keys))
        if unknown:
            raise ValueError(f"msae: {name} names {unknown}, which are not attacked (attacked: {sorted(keys)})")
        return {k: value.get(k, default) for k in keys}
    return {k: (default if value is None else value) for k in keys}


class _Objective:
    """Attack loss and per-modality distortion of the chosen baselines (module docstring)."""

    def __init__(self, model, mods, targets, base, lengths, targeted, kappa):
        self.model, self.mods, self.targeted, self.kappa, self.base = model, mods, targeted, kappa, base
        first = mods[0].x
        self.ctc = not torch.is_tensor(targets)
        self.lengths = lengths
        if self.ctc:
            if isinstance(targets, str) or len(targets) != len(first):
                raise ValueError(f"msae: need one target transcript per example ({len(first)}), got {targets!r:.80}")
            refs = _ctc.normalize_texts(model, targets)
            self.refs = refs
            self.seqs = [model.encode_text(r) for r in refs]
            if any(not s for s in self.seqs):
                raise ValueError(f"msae: a target transcript has no character the recogniser knows: {targets!r:.80}")
            if lengths is None:
                self.lengths = torch.full((len(first),), next(m.x.shape[1] for m in mods if m.key == "audio")
                                          if any(m.key == "audio" for m in mods) else 1, dtype=torch.long)
        else:
            if targets.dim() != 1 or len(targets) != len(first):
                raise ValueError(f"msae: targets must be ({len(first)},) class indices, got shape {tuple(targets.shape)}")
        for m in mods:
            b = base[m.key]
            allowed = tuple(CTC_BASES) if (self.ctc and m.key == "audio") else ("cw",)
            if b not in allowed:
                raise ValueError(f"msae: base for {m.key!r} must be one of {', '.join(allowed)} here, not {b!r}")
        self.theta = None
        if self.ctc and base.get("audio") == "imperceptible":
            from ..signal.masking import masking_threshold
            a = next(m.x for m in mods if m.key == "audio")
            self.theta, self.psd_max = masking_threshold(a, lengths=self.lengths)

    def attack_loss(self, adv_inputs, idx):
        """(per-example loss, per-example success) for rows idx."""
        if self.ctc:
            seqs = [self.seqs[i] for i in idx.tolist()]
            tg = torch.tensor([c for s in seqs for c in s], dtype=torch.long)
            tl = torch.tensor([len(s) for s in seqs], dtype=torch.long)
            loss, hyps = _ctc.ctc_objective(self.model, adv_inputs, self.lengths[idx], tg, tl)
            refs = [self.refs[i] for i in idx.tolist()]
            ok = torch.tensor([(h == r) == self.targeted for h, r in zip(hyps, refs)], dtype=torch.bool,
                              device=loss.device)
            return (loss if self.targeted else -loss), ok
        logits = self.model(adv_inputs)
        lab = self.targets[idx]
        return hinge(logits, lab, targeted=self.targeted, kappa=self.kappa), \
            is_adversarial(logits.argmax(1).detach(), lab, self.targeted)

    def distortion(self, m: _Mod, d, idx, alpha):
        if self.ctc and m.key == "audio" and self.base["audio"] == "imperceptible":
            from ..signal.masking import masking_loss
            return alpha * masking_loss(d, self.theta[idx], self.psd_max[idx], self.lengths[idx])
        return d.flatten(1).pow(2).sum(1)

    def box(self, m: _Mod, delta, params):
        """The baseline's own constraint on delta, and the valid range of x + delta."""
        x = m.x
        if self.ctc and m.key == "audio":
            b = self.base["audio"]
            if b == "ipc":
                lim = params["ratio"] * x.abs()
                delta = torch.maximum(torch.minimum(delta, lim), -lim)
            else:
                delta = delta.clamp(-params["tau"], params["tau"])
        return torch.maximum(torch.minimum(delta, m.hi - x), m.lo - x)


def _base_params(base: str, ctc: bool, key: str) -> dict:
    """Step size and constraint of a modality's baseline, read from the base attack's signature."""
    if ctc and key == "audio":
        fn = CTC_BASES[base]
        p = {"lr": _default(fn, "lr_stage1" if base == "imperceptible" else "lr"),
             "l2_weight": 0.0 if base == "imperceptible" else _default(fn, "l2_weight")}
        if base == "ipc":
            p["ratio"] = _default(fn, "ratio")
        else:
            p["tau"] = _default(fn, "tau")
        if base == "imperceptible":
            p["alpha"] = _default(fn, "alpha")
        return p
    return {"lr": _default(cw_l2, "lr"), "l2_weight": 1.0}


def msae(model, inputs, targets, *, base: str | dict | None = None, sparsity: float | dict = 0.3,
         targeted: bool = True, lengths=None, structure: dict | None = None, audio_frame: int = 160,
         warmup: int = 50, rounds: int = 100, finetune: int = 100, c: float = 10.0, c_up: float = 2.0,
         adapt_every: int = 10, kappa: float = 0.0, lr: dict | None = None, mask_lr: float = 0.05,
         rho: float = 0.2, rho_growth: float = 1.05, rho_max: float = 10.0, ranges: dict | None = None,
         project: dict | None = None, mask_gradient: str = "attack"):
    """MSAE (module docstring, (M1)-(M8)), batched. Returns (adv_inputs, records).

    inputs: a (B, T) waveform tensor, or a dict such as {"audio": (B, T), "video": (B, F, H, W)}
    (audio in [-1, 1], video in [0, 1]; other keys are passed to the model unchanged). The
    attacked modalities are the keys of `sparsity` when it is a dict, else every "audio" /
    "video" entry. targets: (B,) class indices for classifiers (`model(inputs) -> logits`);
    transcripts for CTC recognisers (`model.frame_logits(inputs, lengths)`, `lengths` = audio
    lengths in samples). targeted: targets are the wanted outputs (default) or the true ones.
    base: per-modality baseline, "cw" (CW-l2; for a recogniser's audio, cw_ctc's loss and box),
    "ipc" or "imperceptible" (recogniser audio only); one string for all or a dict.
    sparsity: fraction s of each modality's positions that may change (1 = dense baseline, no
    mask); the mask has exactly floor(s n) ones. structure: per modality "sample"/"pixel"/"element"
    (default) or "frame" (audio frames of `audio_frame` samples, whole video frames).
    warmup / rounds / finetune: steps of the three phases (the dense baseline runs as many: after
    its warm-up, rounds + finetune steps with the all-ones mask). c, c_up, adapt_every, kappa:
    initial weight of the attack loss, its factor of change (warm-up: raised for examples not yet
    adversarial; fine-tuning: CW's search over c, online), how often c adapts, the CW confidence.
    lr: Adam step per modality (default: the base attack's). mask_lr (eta), rho, rho_growth, rho_max:
    ADMM (M5), (M7). ranges: value range per modality for keys other than audio / video.
    project: per-modality hook `h(delta (B, N), step=, total=, lengths=None)` applied after every
    step (e.g. `attacks.sparse.HardThreshold`). mask_gradient: g of (M5) from the attack term
    c * L_adv ("attack") or from the whole objective (M1) ("objective"). The attack draws no random numbers: same inputs,
    same result (for a model in eval mode).
    """
    t0 = time.perf_counter()
    if mask_gradient not in ("attack", "objective"):
        raise ValueError(f"msae: mask_gradient must be 'attack' or 'objective', not {mask_gradient!r}")
    tensor_in = torch.is_tensor(inputs)
    feed = {"audio": inputs} if tensor_in else dict(inputs)
    if not isinstance(feed, dict):
        raise TypeError(f"msae: inputs must be a tensor or a dict of tensors, not {type(inputs).__name__}")
    keys = attacked_modalities(feed, sparsity)
    if not keys:
        raise ValueError(f"msae: nothing to attack: inputs have keys {sorted(feed)}, sparsity {sparsity!r}")
    for k in keys:
        if k not in feed or not torch.is_tensor(feed[k]):
            raise ValueError(f"msae: sparsity names {k!r}, but inputs have no tensor {k!r} (keys {sorted(feed)})")
    ranges = {**RANGES, **(ranges or {})}
    for k in keys:
        if k not in ranges:
            raise ValueError(f"msae: no value range for {k!r}; pass ranges={{{k!r}: (lo, hi)}}")
    spars = _per_modality(sparsity, keys, "sparsity")
    for k, s in spars.items():
        if not 0.0 <= float(s) <= 1.0:
            raise ValueError(f"msae: sparsity of {k!r} must lie in [0, 1], got {s}")
    bases = _per_modality(base, keys, "base", "cw")
    units = _per_modality(structure, keys, "structure")
    hooks = _per_modality(project, keys, "project")
    b = len(feed[keys[0]])
    if any(len(feed[k]) != b for k in keys):
        raise ValueError(f"msae: attacked entries have different batch sizes {[len(feed[k]) for k in keys]}")
    if lengths is not None:
        lengths = torch.as_tensor(lengths, dtype=torch.long)
    mods = []
    for k in keys:
        x = feed[k].detach()
        lo, hi = ranges[k]
        if x.numel() and (x.min() < lo - 1e-6 or x.max() > hi + 1e-6):
            raise ValueError(f"msae: {k!r} must lie in [{lo}, {hi}] (got [{float(x.min()):.3g}, {float(x.max()):.3g}])")
        mods.append(_make_mod(k, x, units[k] or UNITS.get(k, "element"), audio_frame, lengths, (lo, hi)))
    if not torch.is_tensor(targets) or targets.dtype != torch.long:
        if torch.is_tensor(targets):
            targets = targets.long()
    obj = _Objective(model, mods, targets, bases, lengths, targeted, kappa)
    if not obj.ctc:
        obj.targets = targets.to(mods[0].x.device)
    params = {m.key: _base_params(bases[m.key], obj.ctc, m.key) for m in mods}
    for k, v in (lr or {}).items():
        if k not in params:
            raise ValueError(f"msae: lr names {k!r}, which is not attacked")
        params[k]["lr"] = float(v)
    dense = {m.key: float(spars[m.key]) >= 1.0 for m in mods}
    for m in mods:
        nb = m.valid.sum(1)
        m.k = nb if dense[m.key] else torch.floor(float(spars[m.key]) * nb.double() + 1e-9).long()

    # variables: delta per modality (Adam), mask per modality (ADMM state)
    deltas = {m.key: torch.zeros_like(m.x, requires_grad=True) for m in mods}
    opt = torch.optim.Adam([{"params": [deltas[m.key]], "lr": params[m.key]["lr"]} for m in mods],
                           betas=ADAM_BETAS, eps=ADAM_EPS)
    for m in mods:
        v = m.valid.to(m.x.dtype)
        m.state = {"m": v.clone(), "y1": v.clone(), "y2": v.clone(), "z1": torch.zeros_like(v),
                   "z2": torch.zeros_like(v), "z3": torch.zeros(b, dtype=v.dtype, device=v.device),
                   "rho": rho}
    dev = mods[0].x.device
    cw = torch.full((b,), float(c), device=dev)
    alpha = params.get("audio", {}).get("alpha", 0.0)
    any_sparse = not all(dense.values())
    total = warmup + rounds + finetune
    fine_start = warmup + rounds if any_sparse else warmup   # from here on the mask is final
    c_lo = torch.zeros(b, device=dev)
    c_hi = torch.full((b,), math.inf, device=dev)
    best_cost = torch.full((b,), math.inf, device=dev)
    best = {m.key: torch.zeros_like(m.x) for m in mods}
    success = torch.zeros(b, dtype=torch.bool, device=dev)
    first = [None] * b
    ok_window = torch.zeros(b, dtype=torch.bool, device=dev)
    idx = torch.arange(b, device=dev)
    binary = False

    def finalise_masks():
        for m in mods:
            st = m.state
            if dense[m.key]:
                st["m"] = m.valid.to(m.x.dtype)
            else:
                soft = st["m"]
                score = torch.where(m.valid, soft, torch.full_like(soft, -math.inf))
                st["m"] = hard_threshold(torch.ones_like(soft), m.k, m.valid.sum(1), score=score)
                with torch.no_grad():  # kept positions start from the perturbation the model saw, m * delta
                    deltas[m.key].mul_(m.expand(soft.clamp(0.0, 1.0)))

    with _ctc.frozen_weights(model):
        for step in range(total):
            admm = any_sparse and warmup <= step < warmup + rounds
            if step == fine_start and not binary:
                finalise_masks()
                binary = True
                ok_window.zero_()  # c now adapts to the binary mask's successes
            masks = {}
            for m in mods:
                mm = m.state["m"].detach()
                if admm and not dense[m.key]:
                    mm = mm.clone().requires_grad_(True)
                elif not binary:
                    mm = m.valid.to(m.x.dtype)  # warm-up: dense
                masks[m.key] = mm
            adv = dict(feed)
            dist = torch.zeros(b, device=dev)
            pert, seen = {}, []
            for m in mods:
                d = m.expand(masks[m.key]) * deltas[m.key]
                xa = (m.x + d).clamp(m.lo, m.hi)
                pert[m.key] = xa - m.x
                adv[m.key] = xa
                if masks[m.key].requires_grad and mask_gradient == "attack":
                    # the model reads its own view of xa: the gradient there is the attack term's alone
                    adv[m.key] = xa.view_as(xa)
                    seen.append(adv[m.key])
                if obj.ctc and m.key == "audio" and bases["audio"] == "imperceptible":
                    dist = dist + obj.distortion(m, pert[m.key], idx, alpha)
                else:
                    dist = dist + params[m.key]["l2_weight"] * pert[m.key].flatten(1).pow(2).sum(1)
            loss_adv, ok = obj.attack_loss(adv["audio"] if tensor_in else adv, idx)
            ok = ok.to(dev)
            if binary and ready(hooks, step, total):
                cost = dist.detach()
                better = ok & (cost < best_cost)
                if better.any():
                    best_cost[better] = cost[better]
                    for m in mods:
                        best[m.key][better] = pert[m.key].detach()[better]
                for i in ok.nonzero().flatten().tolist():
                    if first[i] is None:
                        first[i] = step
                success |= ok
            ok_window |= ok
            total_loss = (cw * loss_adv + dist).sum()
            grads_m = [masks[m.key] for m in mods if masks[m.key].requires_grad]
            opt.zero_grad()
            gm = torch.autograd.grad(total_loss, [deltas[m.key] for m in mods] + grads_m + seen)
            if grads_m and mask_gradient == "attack":
                # g of (M5), the attack term's gradient in m: its gradient at the model's input, taken back to m
                # through x + m * delta alone, rebuilt (no second pass through the model, no retained graph)
                again = [(m.x + m.expand(masks[m.key]) * deltas[m.key]).clamp(m.lo, m.hi)
                         for m in mods if masks[m.key].requires_grad]
                gm = list(gm[:len(mods)]) + list(torch.autograd.grad(again, grads_m, gm[len(mods) + len(grads_m):]))
            for m, g in zip(mods, gm[:len(mods)]):
                deltas[m.key].grad = g
            opt.step()
            with torch.no_grad():
                for m in mods:
                    d = obj.box(m, deltas[m.key], params[m.key])
                    if hooks[m.key] is not None:
                        flat = d.flatten(1)
                        ln = lengths if (m.key == "audio" and lengths is not None and m.x.dim() == 2) else None
                        d = hooks[m.key](flat, step=step, total=total, lengths=ln).view_as(d)
                    deltas[m.key].copy_(d)
                if admm:
                    gi = iter(gm[len(mods):])
                    for m in mods:
                        if not dense[m.key]:
                            _admm_step(m, next(gi), mask_lr, rho_growth, rho_max)
            if (step + 1) % adapt_every == 0:
                if binary:  # CW's search on c, per example and online: bisect between failing and succeeding c
                    c_hi = torch.where(ok_window, torch.minimum(c_hi, cw), c_hi)
                    c_lo = torch.where(ok_window, c_lo, torch.maximum(c_lo, cw))
                    cw = torch.where(torch.isfinite(c_hi), (c_lo + c_hi) / 2, cw * c_up)
                    cw = torch.where(ok_window & (c_lo == 0), c_hi / c_up, cw)
                elif not admm:  # warm-up; the relaxed mask's failures say nothing about the binary one's
                    cw[~ok_window] *= c_up
                ok_window.zero_()
    if not binary:
        finalise_masks()
    with torch.no_grad():
        out = dict(feed)
        final = {}
        for m in mods:
            d = torch.where(success.view(-1, *([1] * (m.x.dim() - 1))).to(m.x.device), best[m.key],
                            (m.x + m.expand(m.state["m"]) * deltas[m.key]).clamp(m.lo, m.hi) - m.x)
            final[m.key] = d
            out[m.key] = m.x + d
        records = _records(mods, final, success, first, total, cw, time.perf_counter() - t0)
    return (out["audio"] if tensor_in else out), records


def ready(hooks, step, total) -> bool:
    """Whether every projection hook already enforces its final constraint at `step`."""
    return all(h is None or not hasattr(h, "ready_step") or step > h.ready_step(total) for h in hooks.values())


def _admm_step(m: _Mod, g: torch.Tensor, eta: float, growth: float, rho_max: float) -> None:
    """(M3)-(M7) for one modality, all examples at once."""
    st, valid = m.state, m.valid
    vf = valid.to(g.dtype)
    rho = st["rho"]
    mo = st["m"]
    n = vf.sum(1, keepdim=True).clamp_min(1)
    k = m.k.to(g.dtype)[:, None]
    g = g * vf
    g = g / g.abs().amax(1, keepdim=True).clamp_min(1e-30)
    y1 = box_projection(mo + st["z1"] / rho) * vf                                    # (M3)
    y2 = sphere_projection(mo + st["z2"] / rho, valid)                               # (M4)
    a = 1.0 / eta + 2 * rho                                                          # (M5)
    r = (mo / eta - g - st["z1"] - st["z2"] + rho * y1 + rho * y2
         - st["z3"][:, None] / n.sqrt() + rho * k / n) * vf
    new = (r - rho * r.sum(1, keepdim=True) / (n * (a + rho))) / a * vf
    st["z1"] = st["z1"] + rho * (new - y1)                                           # (M6)
    st["z2"] = st["z2"] + rho * (new - y2)
    st["z3"] = st["z3"] + rho * (new.sum(1) - k[:, 0]) / n[:, 0].sqrt()
    st["m"], st["y1"], st["y2"] = new, y1, y2
    st["rho"] = min(rho * growth, rho_max)                                           # (M7)


def _records(mods, final, success, first, total, cw, seconds) -> list[dict]:
    recs = [{"success": bool(success[i]), "iterations": total, "first_success": first[i], "c": float(cw[i]),
             "seconds": seconds, "sparsity": {}, "changed": {}, "l2": {}} for i in range(len(success))]
    for m in mods:
        d = final[m.key]
        mask = m.state["m"]
        nb = m.valid.sum(1)
        # a position is changed when any entry it covers is
        changed_pos = _positions(m, d != 0)
        for i, r in enumerate(recs):
            n = int(nb[i])
            r["sparsity"][m.key] = float(mask[i].sum()) / max(n, 1)
            r["changed"][m.key] = float(changed_pos[i].sum()) / max(n, 1)
            r["l2"][m.key] = float(d[i].norm())
        if m.key == "audio" and m.x.dim() == 2:
            s = _snr(m.x, d)
            for i, r in enumerate(recs):
                r["snr_db"] = float(s[i])
        if m.key == "video":
            mse = d.flatten(1).pow(2).mean(1)
            psnr = 10 * torch.log10((m.hi - m.lo) ** 2 / mse.clamp_min(1e-30))
            touched = (d != 0).flatten(2).any(2).float().mean(1)
            for i, r in enumerate(recs):
                r["psnr_db"] = float(psnr[i]) if mse[i] > 0 else math.inf
                r["frames_touched"] = float(touched[i])
    return recs


def _positions(m: _Mod, changed: torch.Tensor) -> torch.Tensor:
    """(B, ...) bool over entries -> (B, n) bool over mask positions."""
    b = changed.shape[0]
    if m.unit in PER_ENTRY:
        return changed.reshape(b, -1)
    if m.x.dim() == 2:
        t = changed.shape[1]
        pad = m.n * m.frame - t
        return torch.nn.functional.pad(changed, (0, pad)).reshape(b, m.n, m.frame).any(2)
    return changed.flatten(2).any(2)


class AudioView(torch.nn.Module):
    """An audio-visual recogniser seen as an audio-only one, the video held fixed: lets the
    library's speech-to-text attacks (which perturb a waveform tensor) attack the audio of an AV
    model."""

    def __init__(self, model, video: torch.Tensor):
        super().__init__()
        self.model, self.video = model, video
        self.blank, self.sample_rate = model.blank, model.sample_rate

    def frame_logits(self, wav, lengths=None):
        video = self.video.expand(len(wav), *self.video.shape[1:])     # one utterance's video, every row
        return self.model.frame_logits({"audio": wav, "video": video}, lengths)

    def encode_text(self, text):
        return self.model.encode_text(text)

    def decode_labels(self, ids):
        return self.model.decode_labels(ids)

    def normalize_text(self, text):
        return self.model.normalize_text(text)


def run_base(name: str, model, inputs, targets: Sequence[str], *, lengths=None, **kwargs):
    """The dense baseline `name` ("cw", "ipc", "imperceptible") of a recogniser's audio, through the
    library's own attack, as (adv, records) with one dict per utterance. Dict inputs: the
    video (and any other entry) is held fixed and passed through."""
    if name not in CTC_BASES:
        raise ValueError(f"run_base: unknown baseline {name!r}; known: {', '.join(CTC_BASES)}")
    fn = CTC_BASES[name]
    if torch.is_tensor(inputs):
        adv, records = fn(model, inputs, list(targets), lengths=lengths, **kwargs)
        return adv, records
    # the attacks batch utterances as they see fit, so each utterance is attacked with its own video held
    # fixed (their results do not depend on the batch: the same numbers as one batched call)
    wav = inputs["audio"]
    lengths = torch.full((len(wav),), wav.shape[1]) if lengths is None else torch.as_tensor(lengths)
    advs, records = [], []
    for i in range(len(wav)):
        view = AudioView(model, inputs["video"][i:i + 1])
        a, r = fn(view, wav[i:i + 1], [targets[i]], lengths=lengths[i:i + 1], **kwargs)
        advs.append(a)
        records += r
    adv = torch.cat(advs)
    return (adv if torch.is_tensor(inputs) else {**inputs, "audio": adv}), records


__all__ = ["msae", "box_projection", "sphere_projection", "run_base",
           "AudioView", "RANGES"]
