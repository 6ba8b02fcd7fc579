"""Our speech-to-text attacks against ART and asr-attacks on the same model, utterances and targets.

Libraries (all attack the same trained CTC recogniser, on the same utterances and targets, with the
same l_inf start bound, step sizes, iteration budgets and bound-shrink factor):

- ours: `audioadv.attacks.cw_ctc` / `imperceptible`, all utterances in one padded batch (as a user
  would call them; `--batch-size` splits). Three rows: `ours` runs the whole iteration budget;
  `ours-patience` lets a successful utterance leave the batch once its bound has not shrunk for
  `--patience` steps; `ours-early` sets `stop_after` (an utterance leaves the batch after that many
  successes, each of which shrinks its bound). The loop ends when no utterance is left; all three
  stay within the same budget (in Imperceptible both only act in stage 1).
- art: ART 1.20.1 `CarliniWagnerASR` / `ImperceptibleASR` (+ its `PsychoacousticMasker`, which needs
  librosa) driven through `ARTSpeechRecognizer`, an ART speech-recogniser estimator (ART's
  `SpeechRecognizerMixin` + `PyTorchEstimator`) around our model whose `loss_gradient` runs the
  whole (ragged) batch ART passes in one padded forward/backward. Batch size: ART's own default
  per attack (16 for CarliniWagnerASR, 1 for ImperceptibleASR) unless `--art-batch-size`.
- asr-attacks 0.3.0: `ASRAttacker.cw` / `.imperceptible` through its `CTCModuleBackend` around the
  same model, one utterance per call (its API takes one waveform).

Each library keeps its own algorithmic choices otherwise (ART: signed-gradient steps in stage 1 and
plain gradient steps in stage 2, success checked every 10 / 20 / 50 iterations; asr-attacks: Adam
for CW, signed steps then Adam for Qin, checks every 10; ours: Adam, checks every iteration from
the same forward pass). Step sizes follow the papers' int16-scale values scaled by 2^-15 (ART's
documented rule for waveforms in [-1, 1]).

Targets: `grammar` = another test phrase of the command grammar no longer than the source
transcript; `open` = open-vocabulary words (wordfreq list, the first word from the tenth held out
of training) filling at most the source transcript's length. Success, SNR and dB_x are measured
on the returned audio with our greedy decoder for every library. Time: wall-clock seconds (and
process CPU seconds) per utterance after one untimed warm-up call per library; ratios (ART / ours,
asr-attacks / ours) come from the same run. Writes OUT.md and OUT.jsonl. Needs the ``bench`` extra.

`--budget default` instead calls every library as a user would, with its own defaults (iteration
budget, bound, step size, batch size; read from the installed signatures and written into the
report): ours `cw_ctc` / `imperceptible` defaults plus the row's stop rule (`--patience`, default
10% of cw_ctc's max_iter; `--stop-after`), ART's defaults with its int16-scale eps / learning rates
scaled by 2^-15 (its documented rule for [-1, 1] audio), asr-attacks' defaults. `--cap` caps every
iteration count for smoke tests only (the report says so).

    python benchmarks/asr_vs_art.py --model runs/asr --n 20 --out runs/bench/asr_vs_art
    python benchmarks/asr_vs_art.py --model runs/asr --budget default --n 20 --attacks cw \
        --libs ours-patience,art,ours --jobs 2 --out runs/bench/asr_vs_art_default
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from audioadv.data.utterances import load_utterances, pad_batch
from audioadv.attacks import cw_ctc, imperceptible
from audioadv.asr_report import asr_report
from audioadv.asr_targets import open_targets, select
from audioadv.models import load
from audioadv.models.asr import recognizer_card, transcribe

INT16 = 1.0 / 32768  # the papers' step sizes and bounds are on the int16 scale


def art_estimator(model):
    """An ART speech recogniser (SpeechRecognizerMixin + PyTorchEstimator) around a `Recognizer`."""
    from art.estimators.pytorch import PyTorchEstimator
    from art.estimators.speech_recognition.speech_recognizer import SpeechRecognizerMixin
    import torch.nn.functional as F

    from audioadv.models.asr import encode_targets

    class ARTSpeechRecognizer(SpeechRecognizerMixin, PyTorchEstimator):
        estimator_params = PyTorchEstimator.estimator_params

        def __init__(self, rec):
            super().__init__(model=rec, clip_values=(-1.0, 1.0), channels_first=None, device_type="cpu")
            self.rec = rec

        @property
        def input_shape(self):
            return (None,)

        @staticmethod
        def _batch(x):
            return pad_batch([torch.as_tensor(np.asarray(w, dtype=np.float32)) for w in x])

        def predict(self, x, batch_size=128, **kwargs):
            wav, lengths = self._batch(x)
            with torch.no_grad():
                return np.array([t.upper() for t in transcribe(self.rec, wav, lengths, batch_size=batch_size)])

        def loss_gradient(self, x, y, **kwargs):
            wav, lengths = self._batch(x)
            wav.requires_grad_(True)
            logits, frames = self.rec.frame_logits(wav, lengths)
            targets, tl = encode_targets(self.rec, [str(t).lower() for t in y])
            loss = F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), targets, frames, tl,
                              blank=self.rec.blank, reduction="sum", zero_infinity=True)
            (g,) = torch.autograd.grad(loss, wav)
            out = [g[i, :int(lengths[i])].numpy() for i in range(len(x))]
            return ragged(out) if np.asarray(x).dtype == object else np.stack(out)

        def fit(self, x, y, **kwargs):
            raise NotImplementedError

        def get_activations(self, x, layer, batch_size=128, framework=False):
            raise NotImplementedError

        def compute_loss(self, x, y, **kwargs):
            raise NotImplementedError

    return ARTSpeechRecognizer(model)


def ragged(waves) -> np.ndarray:
    arr = np.empty(len(waves), dtype=object)
    for i, w in enumerate(waves):
        arr[i] = np.asarray(w, dtype=np.float32)
    return arr



def library_defaults() -> dict:
    """Each library's own defaults for the attacks compared, read from the installed signatures
    (so the report states exactly what `--budget default` ran)."""
    import inspect

    def sig(fn, *names):
        ps = inspect.signature(fn).parameters
        return {k: ps[k].default for k in names}

    from art.attacks.evasion import CarliniWagnerASR, ImperceptibleASR
    out = {"ours": {"cw": sig(cw_ctc, "tau", "lr", "max_iter", "c", "l2_weight", "shrink"),
                    "imperceptible": sig(imperceptible, "tau", "lr_stage1", "max_iter_stage1", "lr_stage2",
                                         "max_iter_stage2", "alpha")},
           "art": {"cw": sig(CarliniWagnerASR, "eps", "learning_rate", "max_iter", "decrease_factor_eps",
                             "num_iter_decrease_eps", "batch_size"),
                   "imperceptible": sig(ImperceptibleASR, "eps", "learning_rate_1", "max_iter_1", "learning_rate_2",
                                        "max_iter_2", "alpha", "batch_size")}}
    try:
        from asr_attacks import ASRAttacker
        out["asr-attacks"] = {"cw": sig(ASRAttacker.cw, "epsilon", "learning_rate", "num_iter", "c",
                                        "decrease_factor_eps", "num_iter_decrease_eps"),
                              "imperceptible": sig(ASRAttacker.imperceptible, "epsilon", "learning_rate1",
                                                   "learning_rate2", "num_iter1", "num_iter2")}
    except ImportError:
        pass
    return out


OURS = ("ours", "ours-early", "ours-patience")


def stop_after_of(lib: str, args) -> int | None:
    """`ours-early` stops after --stop-after successes, `ours-early:K` after K (several rows, one run)."""
    if not lib.startswith("ours-early"):
        return None
    return int(lib.split(":")[1]) if ":" in lib else args.stop_after


def run_ours(lib, attack, model, clean, targets, args, cw_kwargs: dict, imperceptible_kwargs: dict):
    """Ours in padded batches of `--batch-size` (0: all), with the row's stop rule (`ours-early`:
    stop_after, `ours-patience`: patience) and the attack's keyword arguments. Returns the
    adversarial waveforms and per-utterance steps / first success."""
    stop = stop_after_of(lib, args)
    patience, stage2 = None, {}
    if lib.startswith("ours-patience"):  # `ours-patience:P` sets P (several rows in one run), `:P/S`
        # also Imperceptible's stage-2 convergence stop (patience_stage2=S)
        spec = lib.split(":")[1] if ":" in lib else str(args.patience)
        patience = int(spec.split("/")[0])
        if "/" in spec and attack == "imperceptible":
            stage2 = {"patience_stage2": int(spec.split("/")[1])}
    bs = args.batch_size or len(clean)
    advs, info = [], []
    for s in range(0, len(clean), bs):
        wav, lengths = pad_batch([torch.as_tensor(w) for w in clean[s:s + bs]])
        tg = targets[s:s + bs]
        if attack == "cw":
            adv, rec = cw_ctc(model, wav, tg, lengths=lengths, stop_after=stop, patience=patience, batch_size=bs,
                              **cw_kwargs)
        else:
            adv, rec = imperceptible(model, wav, tg, lengths=lengths, stop_after=stop, patience=patience,
                                     batch_size=bs, **stage2, **imperceptible_kwargs)
        advs += [adv[i, :int(lengths[i])].numpy() for i in range(len(tg))]
        info += [{"steps": r["iterations"], "first_success": r["first_success"]} for r in rec]
    return advs, info


def run_default(lib, attack, model, clean, targets, args):
    """`--budget default`: every library as a user calls it, i.e. its own defaults for budget, bound,
    step and batching. Only the stop rule of ours (`ours-patience` / `ours-early`) is set, and ART's
    int16-scale eps / learning rates are scaled by 2^-15 as ART documents for [-1, 1] audio.
    `args.cap` (warm-up only) caps every iteration count."""
    cap = args.cap
    if lib.split(":")[0] in OURS:
        return run_ours(lib, attack, model, clean, targets, args,
                        {"max_iter": cap} if cap else {},
                        {"max_iter_stage1": cap, "max_iter_stage2": cap} if cap else {})
    if lib == "asr-attacks":
        from asr_attacks import ASRAttacker, CTCModuleBackend
        labels = ["-"] + list(model.vocab.chars)
        atk = ASRAttacker(CTCModuleBackend(model, labels, blank_id=model.blank, freeze_model=True), verbose=False)
        if attack == "cw":
            return [atk.cw(torch.as_tensor(w), target=t, targeted=True, **({"num_iter": cap} if cap else {}))
                    for w, t in zip(clean, targets)], None
        return [atk.imperceptible(torch.as_tensor(w), target=t, targeted=True,
                                  **({"num_iter1": cap, "num_iter2": cap} if cap else {}))
                for w, t in zip(clean, targets)], None
    if lib == "art":
        from art.attacks.evasion import CarliniWagnerASR, ImperceptibleASR
        from art.attacks.evasion.imperceptible_asr.imperceptible_asr import PsychoacousticMasker
        d = library_defaults()["art"][attack]
        est = art_estimator(model)
        if attack == "cw":
            atk = CarliniWagnerASR(est, eps=d["eps"] * INT16, learning_rate=d["learning_rate"] * INT16,
                                   **({"max_iter": cap} if cap else {}))
        else:
            atk = ImperceptibleASR(est, PsychoacousticMasker(), eps=d["eps"] * INT16,
                                   learning_rate_1=d["learning_rate_1"] * INT16,
                                   learning_rate_2=d["learning_rate_2"] * INT16,
                                   **({"max_iter_1": cap, "max_iter_2": cap} if cap else {}))
        return art_generate(atk, clean, targets), None
    raise SystemExit(f"unknown library {lib!r} (ours, ours-patience, ours-early, asr-attacks, art)")


def art_generate(atk, clean, targets):
    # ART's generate() walks the inputs in chunks of batch_size, each attacked independently. Its
    # ragged (object array) path breaks on a chunk whose waveforms all have one length (e.g. a
    # chunk of one), so chunks are passed here one by one: ragged, or (k, T) float when equal.
    bs, advs = atk.batch_size, []
    for s in range(0, len(clean), bs):
        chunk, y = clean[s:s + bs], np.array([t.upper() for t in targets[s:s + bs]])
        x = np.stack(chunk) if len({len(w) for w in chunk}) == 1 else ragged(chunk)
        advs += [np.asarray(a, dtype=np.float32).reshape(-1) for a in atk.generate(x, y)]
    return advs


def run_library(lib, attack, model, clean, targets, args):
    """Adversarial waveforms (list of 1-D arrays) from one library, and per-utterance extras (or None)."""
    if args.budget == "default":
        return run_default(lib, attack, model, clean, targets, args)
    if lib.split(":")[0] in OURS:
        advs, _ = run_ours(lib, attack, model, clean, targets, args,
                           dict(tau=args.eps, lr=args.lr, shrink=args.shrink, max_iter=args.iters),
                           dict(tau=args.eps, lr_stage1=args.lr, max_iter_stage1=args.iters, lr_stage2=args.lr2,
                                max_iter_stage2=args.iters2))
        return advs, None
    if lib == "asr-attacks":
        from asr_attacks import ASRAttacker, CTCModuleBackend
        labels = ["-"] + list(model.vocab.chars)
        atk = ASRAttacker(CTCModuleBackend(model, labels, blank_id=model.blank, freeze_model=True), verbose=False)
        advs = []
        for w, t in zip(clean, targets):
            if attack == "cw":
                advs.append(atk.cw(torch.as_tensor(w), target=t, targeted=True, epsilon=args.eps,
                                   learning_rate=args.lr, num_iter=args.iters, decrease_factor_eps=args.shrink))
            else:
                advs.append(atk.imperceptible(torch.as_tensor(w), target=t, targeted=True, epsilon=args.eps,
                                              learning_rate1=args.lr, learning_rate2=args.lr2,
                                              num_iter1=args.iters, num_iter2=args.iters2,
                                              decrease_factor_eps=args.shrink))
        return advs, None
    if lib == "art":
        from art.attacks.evasion import CarliniWagnerASR, ImperceptibleASR
        from art.attacks.evasion.imperceptible_asr.imperceptible_asr import PsychoacousticMasker
        est = art_estimator(model)
        kw = {} if not args.art_batch_size else {"batch_size": args.art_batch_size}
        if attack == "cw":
            atk = CarliniWagnerASR(est, eps=args.eps, learning_rate=args.lr, max_iter=args.iters,
                                   decrease_factor_eps=args.shrink, **kw)
        else:
            atk = ImperceptibleASR(est, PsychoacousticMasker(), eps=args.eps, learning_rate_1=args.lr,
                                   max_iter_1=args.iters, learning_rate_2=args.lr2, max_iter_2=args.iters2,
                                   decrease_factor_eps=args.shrink, **kw)
        return art_generate(atk, clean, targets), None
    raise SystemExit(f"unknown library {lib!r} (ours, ours-patience, ours-early, asr-attacks, art)")


def measure(model, clean_waves, advs, targets, originals):
    wav, lengths = pad_batch([torch.as_tensor(w) for w in clean_waves])
    adv = torch.zeros_like(wav)
    for i, a in enumerate(advs):
        a = torch.as_tensor(np.asarray(a, dtype=np.float32).reshape(-1))[:int(lengths[i])]
        adv[i, :len(a)] = a.clamp(-1, 1)
    return asr_report(model, wav, adv, targets, originals, lengths)


def summarize(rows, wall, cpu):
    ok = [r for r in rows if r["success"]]
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return {"n": len(rows), "successes": len(ok), "success_rate": len(ok) / len(rows),
            "snr_db": mean([r["snr_db"] for r in ok]), "db_x": mean([r["db_x"] for r in ok]),
            "wall_s": wall, "cpu_s": cpu, "wall_per_utt": wall / len(rows), "cpu_per_utt": cpu / len(rows)}


def report(path: Path, meta: dict, summaries: list[dict]) -> None:
    """OUT.md: the settings, then one table per target set (each from one process), ratios included."""
    names = {"ours": "ours (batched, full budget)", "ours-early": f"ours (batched, stop_after={meta['stop_after']})",
             "ours-patience": f"ours (batched, patience={meta['patience']})",
             "art": f"ART {meta['art_version']}", "asr-attacks": f"asr-attacks {meta['asr_attacks_version']}"}
    if meta.get("budget") == "default":
        names.update({"ours": "ours (defaults, no stop rule)", "ours-early": f"ours (defaults, stop_after={meta['stop_after']})",
                      "ours-patience": f"ours (defaults, patience={meta['patience']})",
                      "art": f"ART {meta['art_version']} (defaults)",
                      "asr-attacks": f"asr-attacks {meta['asr_attacks_version']} (defaults)"})
    kind = "defaults" if meta.get("budget") == "default" else "batched"
    for lib in meta["libs"]:
        if lib.startswith("ours-early:"):
            names[lib] = f"ours ({kind}, stop_after={lib.split(':')[1]})"
        if lib.startswith("ours-patience:"):
            p1, _, p2 = lib.split(":")[1].partition("/")
            names[lib] = f"ours ({kind}, patience={p1}" + (f", stage-2 patience={p2})" if p2 else ")")
    lines = [
        "# Targeted speech-to-text attacks: audioadv vs ART vs asr-attacks", "",
        f"Written by `{meta['command']}` (started {meta['started']}, torch {meta['torch']}, {meta['threads']} "
        f"thread(s) per process; {'each target set in its own process, run side by side' if meta['jobs'] > 1 else 'one process'}).",
        "",
        f"- model: `{meta['model']}` (-> `{meta['model_dir']}`: {meta['model_desc']})",
        f"- utterances: {meta['n']} `{meta['data']}` test utterances (voices unseen in training; {meta['clean_ok']} of "
        "them transcribed correctly when clean), the same for every library and both target sets",
        "- targets: `grammar` = another grammar phrase no longer than the source; `open` = open-vocabulary words "
        "(wordfreq list), the first one held out of training, filling at most the source's length",
    ]
    if meta.get("budget") == "default":
        fmt = lambda d: ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())  # noqa: E731
        lines += [
            "- budget: **each library's own defaults** (`--budget default`), as a user calls it; read from the "
            "installed signatures:",
            *[f"  - {lib} {attack}: `{fmt(d)}`" for lib, per in meta["defaults"].items() for attack, d in per.items()
              if attack in meta["attacks"] and any(lb.startswith(lib) for lb in meta["libs"])],
            "  - ART's eps and learning rates are int16-scale; they are scaled by 2^-15 as ART's docstring says for "
            f"[-1, 1] audio (CW: eps {meta['defaults']['art']['cw']['eps'] * INT16:.4g}, step "
            f"{meta['defaults']['art']['cw']['learning_rate'] * INT16:.3g}); everything else as ART sets it. ART "
            "always runs all max_iter iterations on each chunk of batch_size utterances",
            "  - ours: all defaults; the only setting is the stop rule of the row"
            + ("; `patience=P`: a successful utterance leaves the batch once its bound has not "
               "shrunk for P steps (`--patience` default: 10% of max_iter, the proportion of the equal-budget run's "
               "patience=10 of 100)" if any(lb.startswith("ours-patience") for lb in meta["libs"]) else "")
            + ("; `stop_after=K`: an utterance leaves after K successes (each shrinks its bound x0.8)"
               if any(lb.startswith("ours-early") for lb in meta["libs"]) else "")
            + ("; `ours` without a stop rule runs the whole budget" if "ours" in meta["libs"] else ""),
        ]
        if meta.get("cap"):
            lines.append(f"  - **smoke test: every iteration count capped at {meta['cap']} (`--cap`), not the defaults**")
    else:
        lines += [
        f"- budget, every library: {meta['iters']} stage-1 iterations, {meta['iters2']} stage-2 iterations "
        f"(Imperceptible); start bound eps {meta['eps']:.4g} (2000 int16); stage-1 step {meta['lr']:.3g} (100 int16); "
        f"stage-2 step {meta['lr2']:.3g} (1 int16); bound x{meta['shrink']} on success; all else each library's "
        "default (see the script's docstring)",
        ]
    lines += [
        f"- batching: ours one padded batch of {meta['batch_size']}; ART batch size {meta['art_batch']}; "
        "asr-attacks one utterance per call (its API)",
        "- success: our greedy transcript of the returned audio equals the target; SNR and dB_x: means over the "
        "successful utterances",
        "- time: seconds per utterance after an untimed warm-up call per library, wall clock and process CPU; "
        "ratios = other library's time / this row's time, both from the same process. The machine is shared "
        "(2 cores; the 1-min load average is listed), so wall time is inflated by other jobs and the CPU-time "
        "ratios are the reliable ones",
    ]
    for tname in dict.fromkeys(r["targets"] for r in summaries):
        rows = {(r["attack"], r["library"]): r for r in summaries if r["targets"] == tname}
        lines += ["", f"## {tname} targets", "",
                  "| attack | library | success | SNR (dB) | dB_x | wall s / utt | CPU s / utt | ART / this (wall, CPU) "
                  "| asr-attacks / this (wall, CPU) | load |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for (attack, lib), r in rows.items():
            def ratio(other):
                o = rows.get((attack, other))
                if not o or not lib.startswith("ours"):
                    return ""
                return f"{o['wall_s'] / r['wall_s']:.1f}x, {o['cpu_s'] / r['cpu_s']:.1f}x"
            lines.append(f"| {attack} | {names.get(lib, lib)} | {r['successes']}/{r['n']} | {r['snr_db']:.1f} | "
                         f"{r['db_x']:.1f} | {r['wall_per_utt']:.2f} | {r['cpu_per_utt']:.2f} | {ratio('art')} | "
                         f"{ratio('asr-attacks')} | {r['load_before']:.1f}-{r['load_after']:.1f} |")
    path.write_text("\n".join(lines) + "\n")


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def merge(out: Path, sets: list[str]) -> None:
    """OUT.md / OUT.jsonl from the per-target-set part files of a --jobs run (then removed)."""
    rows = [r for tname in sets if Path(f"{out}.part-{tname}.jsonl").is_file()
            for r in read_jsonl(f"{out}.part-{tname}.jsonl")]
    meta = json.loads(Path(f"{out}.part-{sets[0]}.meta.json").read_text())
    with open(f"{out}.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    report(Path(f"{out}.md"), meta, [r for r in rows if r["row"] == "summary"])
    for tname in sets:
        for suffix in (".jsonl", ".md", ".meta.json"):
            Path(f"{out}.part-{tname}{suffix}").unlink(missing_ok=True)
    print(Path(f"{out}.md").read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/asr")
    p.add_argument("--data", default="synth-phrases")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--targets", default="grammar,open", help="grammar and/or open")
    p.add_argument("--attacks", default="cw,imperceptible")
    p.add_argument("--libs", default="ours,ours-patience,ours-early,art,asr-attacks",
                   help="rows: ours, ours-patience (--patience) or ours-patience:P (or P/S: Imperceptible's "
                        "patience_stage2=S too), ours-early (--stop-after) or "
                        "ours-early:K, art, asr-attacks")
    p.add_argument("--budget", choices=["equal", "default"], default="equal",
                   help="equal: the settings below for every library; default: each library's own defaults "
                        "(budget, bound, steps, batch size), only ours' stop rule set (--patience / --stop-after)")
    p.add_argument("--iters", type=int, default=100, help="stage-1 (CW) iterations, every library (--budget equal)")
    p.add_argument("--iters2", type=int, default=30, help="stage-2 (masking) iterations, Imperceptible (equal)")
    p.add_argument("--eps", type=float, default=2000 * INT16, help="l_inf start bound (CW / Qin: 2000 int16)")
    p.add_argument("--lr", type=float, default=100 * INT16, help="stage-1 step (Qin / ART: 100 int16)")
    p.add_argument("--lr2", type=float, default=1 * INT16, help="stage-2 step (Qin / ART: 1 int16)")
    p.add_argument("--shrink", type=float, default=0.8, help="bound factor on success (all)")
    p.add_argument("--stop-after", type=int, default=3, help="ours-early: successes before an utterance stops")
    p.add_argument("--patience", type=int, default=None,
                   help="ours-patience: steps without a new success before a successful utterance stops "
                        "(default: 10 with --budget equal; 10%% of cw_ctc's max_iter, i.e. 100, with --budget default)")
    p.add_argument("--batch-size", type=int, default=0, help="ours: utterances per batch (0: all)")
    p.add_argument("--art-batch-size", type=int, default=0, help="ART batch size (0: ART's default per attack)")
    p.add_argument("--cap", type=int, default=None,
                   help="--budget default: cap every iteration count (smoke tests only; stated in the report)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1,
                   help="run each target set in its own process (side by side), then merge the report")
    p.add_argument("--out", default="runs/bench/asr_vs_art", help="writes OUT.md and OUT.jsonl")
    p.add_argument("--merge-only", action="store_true",
                   help="only merge the part files a --jobs run left (e.g. after stopping it)")
    p.add_argument("--meta", help=argparse.SUPPRESS)  # set by the parent process with --jobs
    args = p.parse_args(argv)
    if args.patience is None:
        import inspect
        # equal: 10 (as before); default: 10% of cw_ctc's default max_iter, the same proportion as 10 of 100
        args.patience = 10 if args.budget == "equal" else inspect.signature(cw_ctc).parameters["max_iter"].default // 10
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sets = args.targets.split(",")
    if args.jobs > 1 and len(sets) > 1:
        import subprocess
        base = list(argv if argv is not None else sys.argv[1:])
        procs = []
        for tname in sets:
            cmd = [sys.executable, str(Path(__file__).resolve()), *base, "--jobs", "1", "--targets", tname,
                   "--out", f"{out}.part-{tname}", "--meta", json.dumps({"jobs": args.jobs, "argv": base})]
            procs.append(subprocess.Popen(cmd))
        codes = [pr.wait() for pr in procs]
        merge(out, sets)
        return max(codes)
    if args.merge_only:
        merge(out, sets)
        return 0

    parent = json.loads(args.meta) if args.meta else {"jobs": 1, "argv": list(argv if argv is not None else sys.argv[1:])}
    import art
    model_dir = Path(args.model).resolve()
    model, _ = load(args.model, frozen=True)
    data = load_utterances(args.data, "test")
    chosen, originals, gtargets = select(model, data, args.n, args.seed)
    clean_ok = sum(h == o for h, o in zip(transcribe(model, *pad_batch([data.waves[i] for i in chosen])), originals))
    target_sets = {"grammar": gtargets, "open": open_targets(originals, args.seed)}
    clean = [data.waves[i].numpy() for i in chosen]
    libs, attacks = args.libs.split(","), args.attacks.split(",")
    try:
        from importlib.metadata import version
        aa_version = version("asr-attacks")
    except Exception:  # noqa: BLE001
        aa_version = "?"
    meta = {"command": "python benchmarks/asr_vs_art.py " + " ".join(shlex.quote(a) for a in parent["argv"]),
            "jobs": parent["jobs"], "started": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
            "threads": args.threads, "model": args.model, "model_dir": str(model_dir),
            "model_desc": recognizer_card(model_dir),
            "n": len(chosen), "data": args.data, "clean_ok": clean_ok, "iters": args.iters, "iters2": args.iters2,
            "eps": args.eps, "lr": args.lr, "lr2": args.lr2, "shrink": args.shrink, "stop_after": args.stop_after,
            "patience": args.patience, "batch_size": args.batch_size or len(chosen),
            "art_batch": args.art_batch_size or "ART's default (CarliniWagnerASR 16, ImperceptibleASR 1)",
            "art_version": art.__version__, "asr_attacks_version": aa_version, "budget": args.budget,
            "libs": libs, "attacks": attacks, "cap": args.cap}
    if args.budget == "default":
        meta["defaults"] = library_defaults()
        meta["art_batch"] = "ART's default (CarliniWagnerASR 16, ImperceptibleASR 1)"
    Path(f"{out}.meta.json").write_text(json.dumps(meta, indent=1))

    # One untimed call per library and attack on the shortest utterance: imports and first-call setup.
    k = int(np.argmin([len(w) for w in clean]))
    warm = argparse.Namespace(**{**vars(args), "iters": 2, "iters2": 2, "cap": 2})
    for lib in libs:
        for attack in attacks:
            run_library(lib, attack, model, [clean[k]], [gtargets[k]], warm)

    summaries = []
    with open(f"{out}.jsonl", "w") as jsonl:
        for tname in sets:
            tg = target_sets[tname]
            for attack in attacks:
                for lib in libs:
                    load0 = os.getloadavg()[0]
                    t0, c0 = time.perf_counter(), time.process_time()
                    advs, extra = run_library(lib, attack, model, clean, tg, args)
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    rep = measure(model, clean, advs, tg, originals)
                    s = {"row": "summary", "targets": tname, "attack": attack, "library": lib,
                         **summarize(rep, wall, cpu), "load_before": load0, "load_after": os.getloadavg()[0]}
                    summaries.append(s)
                    print(json.dumps(s), flush=True)
                    jsonl.write(json.dumps(s) + "\n")
                    for i, r in enumerate(rep):
                        jsonl.write(json.dumps({"row": "utterance", "targets": tname, "attack": attack, "library": lib,
                                                "utt": chosen[i], **r, **(extra[i] if extra else {})}) + "\n")
                    jsonl.flush()
                    report(Path(f"{out}.md"), meta, summaries)  # kept current, so a cut-short run still reports
    if not args.meta:
        Path(f"{out}.meta.json").unlink(missing_ok=True)
        print(Path(f"{out}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
