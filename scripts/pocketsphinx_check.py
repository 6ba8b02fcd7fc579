"""Third-party check of the speech-to-text attacks with a real recogniser, pocketsphinx
(``pip install 'audioadv[sphinx]'``; it ships an English acoustic model, a dictionary and a
general language model).

Attacks N synth-phrases test utterances with the selection, targets (other grammar phrases) and
attack settings of scripts/reproduce_sparse.py (CW dense and CW + sparse 0.4 by default; its
current defaults unless --settings names a saved settings.json), then has pocketsphinx transcribe
the clean and the adversarial audio with two searches:

- `grammar`: a JSGF grammar built from the command grammar (`audioadv.data.phrases.phrase_grammar`:
  every template with its slot fillers, 3-7 spoken digits), i.e. a command recogniser that knows
  the phrases, as a smart speaker would. The targets are grammar phrases too, so this listener
  *can* output the target if the perturbation carries over to it. On clean audio it gets about
  half of the phrases exactly (many synth-phrases waveforms end abruptly inside the last word, which
  our recogniser tolerates and pocketsphinx does not), so the table also counts, among the
  utterances pocketsphinx gets right when clean, how many it still gets right when attacked;
- `full`: pocketsphinx's general English trigram language model (a poor fit for eSpeak voices).

An adversarial example "leaves the listener with the original words" when pocketsphinx's transcript
of it equals the original phrase (or is as close to it as its transcript of the clean audio), and
"transfers" when pocketsphinx outputs the target. Each waveform gets `--pad` seconds of silence on
both sides before decoding (pocketsphinx's endpointing and cepstral mean normalisation expect some
silence; eSpeak audio has almost none) and the decoder dithers, the same for clean and adversarial
audio (both settings measured best on clean grammar utterances).
Writes OUT.md and OUT.jsonl.

    python scripts/pocketsphinx_check.py --model runs/asr --n 20 --out results/pocketsphinx
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_sparse import ATTACKS, attack_kwargs, build_parser, select  # noqa: E402

from audioadv.asr_train import load_utterances, pad_batch  # noqa: E402
from audioadv.attacks import sparse  # noqa: E402
from audioadv.attacks._ctc import asr_report  # noqa: E402
from audioadv.data.phrases import DIGITS, phrase_grammar  # noqa: E402
from audioadv.metrics.text import wer  # noqa: E402
from audioadv.models.asr import load_recognizer, recognizer_card  # noqa: E402


def grammar_jsgf() -> str:
    """The command grammar as a JSGF grammar: one alternative per template, one rule per slot."""
    templates, slots = phrase_grammar()
    alts = ["( " + re.sub(r"\{(\w+)\}", r"<\1>", t) + " )" for cat in sorted(templates) for t in templates[cat]]
    lines = ["#JSGF V1.0;", "grammar commands;", "public <command> = " + " | ".join(alts) + ";"]
    lines += [f"<{name}> = " + " | ".join(f"( {c} )" for c in choices) + ";" for name, choices in sorted(slots.items())]
    lines.append("<digit> = " + " | ".join(DIGITS) + ";")
    lines.append("<digits> = <digit> <digit> <digit> [ <digit> ] [ <digit> ] [ <digit> ] [ <digit> ];")
    return "\n".join(lines) + "\n"


class Sphinx:
    """pocketsphinx decoders (`grammar`: the JSGF above; `full`: the default English LM)."""

    def __init__(self, searches=("grammar", "full"), sample_rate: int = 16000, pad: float = 0.3):
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:
            raise SystemExit("pocketsphinx is not installed: pip install 'audioadv[sphinx]'") from exc
        self.sample_rate, self.pad, self.decoders = sample_rate, pad, {}
        for name in searches:
            # dither: eSpeak audio has stretches of exact digital silence (log of zero energy)
            dec = Decoder(samprate=sample_rate, logfn="/dev/null", dither=True)
            if name == "grammar":
                words = set(" ".join(re.sub(r"\{\w+\}", " ", t) for ts in phrase_grammar()[0].values() for t in ts).split())
                words |= {w for ch in phrase_grammar()[1].values() for c in ch for w in c.split()} | set(DIGITS)
                missing = sorted(w for w in words if dec.lookup_word(w) is None)
                if missing:
                    raise SystemExit(f"pocketsphinx's dictionary lacks {missing}")
                dec.add_jsgf_string("commands", grammar_jsgf())
                dec.activate_search("commands")
            elif name != "full":
                raise SystemExit(f"unknown pocketsphinx search {name!r} (grammar, full)")
            self.decoders[name] = dec

    def __call__(self, name: str, waves) -> list[str]:
        dec, out = self.decoders[name], []
        z = np.zeros(int(self.pad * self.sample_rate), dtype=np.float32)
        for w in waves:
            w = np.concatenate([z, np.clip(np.asarray(w, dtype=np.float32), -1, 1), z])
            dec.start_utt()
            dec.process_raw((w * 32767).astype(np.int16).tobytes(), full_utt=True)
            dec.end_utt()
            hyp = dec.hyp()
            out.append(" ".join((hyp.hypstr if hyp else "").lower().split()))
        return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/asr")
    p.add_argument("--data", default="synth-phrases")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--configs", default="cw,cw+sparse0.4", help="e.g. cw,cw+sparse0.4,ipc,ipc+sparse0.4")
    p.add_argument("--settings", default=None,
                   help="a reproduce_sparse settings.json to take the attack settings from (default: that "
                        "script's current defaults)")
    p.add_argument("--max-iter", type=int, default=None, help="override the attacks' iteration budget")
    p.add_argument("--searches", default="grammar,full")
    p.add_argument("--pad", type=float, default=0.3, help="seconds of silence around each waveform for pocketsphinx")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/pocketsphinx", help="writes OUT.md and OUT.jsonl")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python scripts/pocketsphinx_check.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    defaults = vars(build_parser().parse_args([]))
    if args.settings:
        defaults.update(json.loads(Path(args.settings).read_text()))
    if args.max_iter:
        defaults["max_iter"] = args.max_iter
    settings = argparse.Namespace(**defaults)
    searches = args.searches.split(",")
    sphinx = Sphinx(searches, pad=args.pad)

    model_dir = Path(args.model).resolve()
    model = load_recognizer(args.model, frozen=True)
    data = load_utterances(args.data, "test")
    chosen, originals, targets = select(model, data, args.n, settings.seed)
    wav, lengths = pad_batch([data.waves[i] for i in chosen])
    n = len(chosen)
    clean = {s: sphinx(s, [data.waves[i].numpy() for i in chosen]) for s in searches}
    rows = [{"config": "clean", "utt": chosen[k], "original": originals[k], "target": targets[k],
             **{f"sphinx_{s}": clean[s][k] for s in searches}} for k in range(n)]
    summary = {"clean": {s: {"wer_original": wer(originals, clean[s]),
                             "exact_original": sum(h == o for h, o in zip(clean[s], originals)),
                             "exact_target": sum(h == t for h, t in zip(clean[s], targets))} for s in searches}}
    for cfg_name in args.configs.split(","):
        name, _, sp = cfg_name.partition("+sparse")
        attack = ATTACKS[name] if not sp else sparse(ATTACKS[name], float(sp), ramp=settings.ramp)
        info: dict = {}
        t0 = time.process_time()
        adv = attack(model, wav, targets, lengths=lengths, info=info, **attack_kwargs(name, settings))
        cpu = time.process_time() - t0
        rep = asr_report(model, wav, adv, targets, originals, lengths, info)
        heard = {s: sphinx(s, [adv[k, :int(lengths[k])].numpy() for k in range(n)]) for s in searches}
        ok = [k for k, r in enumerate(rep) if r["success"]]
        for k, r in enumerate(rep):
            rows.append({"config": cfg_name, "utt": chosen[k], "original": originals[k], "target": targets[k],
                         "ours": r["decoded"], "success": r["success"], "snr_db": r["snr_db"], "db_x": r["db_x"],
                         "l0": r["l0"], **{f"sphinx_{s}": heard[s][k] for s in searches},
                         **{f"sphinx_{s}_clean": clean[s][k] for s in searches}})
        per = {}
        for s in searches:
            h, c = [heard[s][k] for k in ok], [clean[s][k] for k in ok]
            o, t = [originals[k] for k in ok], [targets[k] for k in ok]
            per[s] = {"wer_original": wer(o, h) if ok else float("nan"),
                      "wer_original_clean": wer(o, c) if ok else float("nan"),
                      "wer_target": wer(t, h) if ok else float("nan"),
                      "exact_original": sum(a == b for a, b in zip(h, o)),
                      "exact_original_clean": sum(a == b for a, b in zip(c, o)),
                      "unchanged": sum(a == b for a, b in zip(h, c)),
                      "right_clean": sum(clean[s][k] == originals[k] for k in ok),
                      "still_right": sum(clean[s][k] == originals[k] and heard[s][k] == originals[k] for k in ok),
                      "exact_target": sum(a == b for a, b in zip(h, t))}
        summary[cfg_name] = {"successes": len(ok), "n": n, "cpu_s": cpu,
                             "snr_db": float(np.mean([rep[k]["snr_db"] for k in ok])) if ok else float("nan"),
                             **per}
        print(cfg_name, json.dumps(summary[cfg_name]), flush=True)

    with open(f"{out}.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        for k, v in summary.items():
            f.write(json.dumps({"config": k, "summary": v}) + "\n")
    st = settings
    lines = [
        "# Does a real recogniser (pocketsphinx) hear the original words in our adversarial examples?", "",
        f"Written by `{command}` ({time.strftime('%Y-%m-%d %H:%M')}).", "",
        f"- attacked model: `{args.model}` (-> `{model_dir}`: {recognizer_card(model_dir)})",
        f"- {n} `{args.data}` test utterances (unseen voices) and targets (other grammar phrases no longer than the "
        "source) chosen as in scripts/reproduce_sparse.py",
        f"- attacks as in scripts/reproduce_sparse.py: CW tau {st.tau}, Adam lr {st.lr}, at most {st.max_iter} "
        f"iterations, l2 weight {st.l2_weight}, patience {st.patience or 'off'}, stop_after {st.stop_after or 'off'}, "
        f"sparsity ramp {st.ramp}; all {n} utterances in one batch",
        "- pocketsphinx " + __import__("importlib.metadata").metadata.version("pocketsphinx")
        + f" with its bundled en-us acoustic model and dictionary; `grammar` = JSGF grammar of the command "
          f"phrases (the targets are in it), `full` = its general English LM; {args.pad} s of silence added around "
          "every waveform",
        "",
        "Clean audio:", "",
        "| search | WER to transcript | exactly the transcript | exactly the (future) target |",
        "|---|---|---|---|",
    ]
    for s in searches:
        c = summary["clean"][s]
        lines.append(f"| {s} | {c['wer_original']:.3f} | {c['exact_original']}/{n} | {c['exact_target']}/{n} |")
    lines += ["", "Adversarial audio (over the examples that fool our model; WER and counts from pocketsphinx):", "",
              "| attack | fools our model | SNR (dB) | search | WER to original (clean audio) | exactly the original "
              "(clean audio) | right when clean and still right | transcript unchanged by the attack | WER to target "
              "| hears the target |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for cfg_name in args.configs.split(","):
        m = summary[cfg_name]
        for s in searches:
            q = m[s]
            lines.append(f"| {cfg_name} | {m['successes']}/{n} | {m['snr_db']:.1f} | {s} | {q['wer_original']:.3f} "
                         f"({q['wer_original_clean']:.3f}) | {q['exact_original']}/{m['successes']} "
                         f"({q['exact_original_clean']}/{m['successes']}) | {q['still_right']}/{q['right_clean']} | "
                         f"{q['unchanged']}/{m['successes']} | "
                         f"{q['wer_target']:.3f} | {q['exact_target']}/{m['successes']} |")
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
