"""Our speech-to-text attacks against ART and asr-attacks on the same model, utterances and targets.

- ART 1.20.1 `CarliniWagnerASR` and `ImperceptibleASR`, driven through `ARTSpeechRecognizer`, an ART
  speech-recogniser estimator around our trained CTC model (below);
- asr-attacks 0.3.0 `ASRAttacker.cw` / `.imperceptible` through its `CTCModuleBackend` around the
  same model (one utterance per call: its API takes one waveform);
- ours: `audioadv.attacks.cw_ctc` / `imperceptible`, batched over all utterances at once.

Each library gets the same l_inf start bound, iteration budget and bound-shrink factor (their
defaults otherwise; all scaled to waveforms in [-1, 1]). Targets come from other grammar phrases
and, with --open, from open-vocabulary sentences. Reports success rate, mean SNR and dB_x over
successes, and wall time per utterance, to OUT/asr_vs_art.md / .json. Needs the ``bench`` extra.

    python benchmarks/asr_vs_art.py --model runs/asr --n 8 --iters 200
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from audioadv.asr_train import load_utterances, pad_batch
from audioadv.attacks import cw_ctc, imperceptible
from audioadv.attacks._ctc import asr_report
from audioadv.models.asr import load_recognizer, transcribe


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

        def _batch(self, x):
            waves = [torch.as_tensor(np.asarray(w, dtype=np.float32)) for w in x]
            return pad_batch(waves)

        def predict(self, x, batch_size=128, **kwargs):
            wav, lengths = self._batch(x)
            return np.array([t.upper() for t in transcribe(self.rec, wav, lengths)])

        def loss_gradient(self, x, y, **kwargs):
            wav, lengths = self._batch(x)
            wav.requires_grad_(True)
            logits, frames = self.rec.frame_logits(wav, lengths)
            targets, tl = encode_targets(self.rec, [str(t).lower() for t in y])
            loss = F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), targets, frames, tl,
                              blank=self.rec.blank, reduction="sum", zero_infinity=True)
            (g,) = torch.autograd.grad(loss, wav)
            out = [g[i, :int(lengths[i])].numpy() for i in range(len(x))]
            return np.array(out, dtype=object) if np.asarray(x).dtype == object else np.stack(out)

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


def measure(model, clean_waves, advs, targets, originals, seconds) -> dict:
    wav, lengths = pad_batch([torch.as_tensor(w) for w in clean_waves])
    adv = torch.zeros_like(wav)
    for i, a in enumerate(advs):
        a = torch.as_tensor(np.asarray(a, dtype=np.float32).reshape(-1))[:int(lengths[i])]
        adv[i, :len(a)] = a
    rows = asr_report(model, wav, adv, targets, originals, lengths)
    ok = [r for r in rows if r["success"]]
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return {"success_rate": len(ok) / len(rows), "snr_db": mean([r["snr_db"] for r in ok]),
            "db_x": mean([r["db_x"] for r in ok]), "seconds_per_utt": seconds / len(rows), "n": len(rows)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/asr")
    p.add_argument("--data", default="synth-phrases")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--iters", type=int, default=200, help="stage-1 (CW) iterations for every library")
    p.add_argument("--iters2", type=int, default=50, help="stage-2 (masking) iterations, Imperceptible")
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--libs", default="ours,asr-attacks,art")
    p.add_argument("--attacks", default="cw,imperceptible")
    p.add_argument("--open", action="store_true", help="also open-vocabulary targets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench_asr")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from reproduce_sparse import select

    model = load_recognizer(args.model)
    for prm in model.parameters():
        prm.requires_grad_(False)
    data = load_utterances(args.data, "test")
    chosen, originals, targets = select(model, data, args.n, args.seed)
    target_sets = {"grammar": targets}
    if args.open:
        from audioadv.data.phrases_open import open_sentences
        rng = random.Random(args.seed)
        sents = open_sentences(200, "train", seed=args.seed)
        target_sets["open"] = [rng.choice([s for s in sents if len(s) <= len(o)] or [o.split()[0]]) for o in originals]
    clean = [data.waves[i].numpy() for i in chosen]
    results = {}
    for tname, tg in target_sets.items():
        for attack in args.attacks.split(","):
            for lib in args.libs.split(","):
                key = f"{lib}/{attack}/{tname}"
                if lib == "art" and attack == "imperceptible":
                    try:
                        import librosa  # noqa: F401  (ART's PsychoacousticMasker imports it)
                    except ImportError:
                        results[key] = {"skipped": "ART ImperceptibleASR needs librosa, which audioadv does not install"}
                        print(key, results[key], flush=True)
                        continue
                t0 = time.perf_counter()
                if lib == "ours":
                    wav, lengths = pad_batch([torch.as_tensor(w) for w in clean])
                    if attack == "cw":
                        adv = cw_ctc(model, wav, tg, lengths=lengths, tau=args.eps, lr=args.lr, max_iter=args.iters,
                                     l2_weight=0.0)
                    else:
                        adv = imperceptible(model, wav, tg, lengths=lengths, tau=args.eps, lr_stage1=args.lr,
                                            max_iter_stage1=args.iters, max_iter_stage2=args.iters2,
                                            lr_stage2=args.lr / 10)
                    advs = [adv[i, :int(lengths[i])].numpy() for i in range(len(clean))]
                elif lib == "asr-attacks":
                    from asr_attacks import ASRAttacker, CTCModuleBackend
                    labels = ["-"] + list(model.vocab.chars)
                    atk = ASRAttacker(CTCModuleBackend(model, labels, blank_id=0, freeze_model=True), verbose=False)
                    advs = []
                    for w, t in zip(clean, tg):
                        if attack == "cw":
                            advs.append(atk.cw(torch.as_tensor(w), target=t, targeted=True, epsilon=args.eps,
                                               learning_rate=args.lr, num_iter=args.iters))
                        else:
                            advs.append(atk.imperceptible(torch.as_tensor(w), target=t, targeted=True,
                                                          epsilon=args.eps, learning_rate1=args.lr,
                                                          learning_rate2=args.lr / 10, num_iter1=args.iters,
                                                          num_iter2=args.iters2))
                elif lib == "art":
                    from art.attacks.evasion import CarliniWagnerASR, ImperceptibleASR
                    from art.attacks.evasion.imperceptible_asr.imperceptible_asr import PsychoacousticMasker
                    est = art_estimator(model)
                    if attack == "cw":
                        atk = CarliniWagnerASR(est, eps=args.eps, learning_rate=args.lr, max_iter=args.iters,
                                               batch_size=len(clean))
                    else:
                        atk = ImperceptibleASR(est, PsychoacousticMasker(), eps=args.eps, learning_rate_1=args.lr,
                                               max_iter_1=args.iters, learning_rate_2=args.lr / 10,
                                               max_iter_2=args.iters2, batch_size=len(clean))
                    advs = list(atk.generate(ragged(clean), np.array([t.upper() for t in tg])))
                else:
                    raise SystemExit(f"unknown library {lib!r}")
                wall = time.perf_counter() - t0
                results[key] = measure(model, clean, advs, tg, originals, wall)
                print(key, json.dumps(results[key]), flush=True)
                (out / "asr_vs_art.json").write_text(json.dumps(results, indent=1))
    lines = [f"Targeted attacks on `{args.model}`, {len(chosen)} `{args.data}` test utterances, "
             f"{args.iters} stage-1 iterations (+{args.iters2} stage-2), start bound {args.eps}, "
             f"{args.threads} CPU thread(s). SNR / dB_x: means over successes.", "",
             "| attack | targets | library | success | SNR (dB) | dB_x | s / utterance |", "|---|---|---|---|---|---|---|"]
    for key, m in results.items():
        lib, attack, tname = key.split("/")
        if "skipped" in m:
            lines.append(f"| {attack} | {tname} | {lib} | skipped: {m['skipped']} | | | |")
            continue
        lines.append(f"| {attack} | {tname} | {lib} | {m['success_rate']:.2f} | {m['snr_db']:.1f} | {m['db_x']:.1f} | "
                     f"{m['seconds_per_utt']:.2f} |")
    (out / "asr_vs_art.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
