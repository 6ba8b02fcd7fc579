"""Third-party check of the speech-to-text attacks with a real recogniser, pocketsphinx
(``pip install 'audioadv[sphinx]'``; it ships an English acoustic and language model).

Attacks N synth-phrases test utterances with the same selection, targets and settings as
scripts/reproduce_sparse.py (CW and IPC, dense and sparse 0.4 by default), then transcribes the
clean and the adversarial audio with pocketsphinx. An adversarial example "transfers to the
listener" when pocketsphinx still hears the original words (WER to the original about as on the
clean audio) and never the target. Writes OUT/pocketsphinx.jsonl and OUT/pocketsphinx.md.

    python scripts/pocketsphinx_check.py --model runs/asr --n 20
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_sparse import ATTACKS, attack_kwargs, build_parser, select  # noqa: E402

from audioadv.asr_train import load_utterances, pad_batch  # noqa: E402
from audioadv.attacks import sparse  # noqa: E402
from audioadv.attacks._ctc import asr_report  # noqa: E402
from audioadv.metrics.text import wer  # noqa: E402
from audioadv.models.asr import load_recognizer  # noqa: E402


def sphinx_transcribe(waves, sample_rate=16000) -> list[str]:
    try:
        from pocketsphinx import Decoder
    except ImportError as exc:
        raise SystemExit("pocketsphinx is not installed: pip install 'audioadv[sphinx]'") from exc
    dec = Decoder(samprate=sample_rate, logfn="/dev/null")
    out = []
    for w in waves:
        pcm = (np.clip(np.asarray(w, dtype=np.float32), -1, 1) * 32767).astype(np.int16).tobytes()
        dec.start_utt()
        dec.process_raw(pcm, full_utt=True)
        dec.end_utt()
        hyp = dec.hyp()
        out.append(" ".join((hyp.hypstr if hyp else "").lower().split()))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/asr")
    p.add_argument("--data", default="synth-phrases")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--configs", default="cw,cw+sparse0.4,ipc,ipc+sparse0.4")
    p.add_argument("--settings", default="runs/reproduce_sparse/settings.json",
                   help="attack settings of the reproduction run (its defaults if absent)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/pocketsphinx")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    defaults = vars(build_parser().parse_args([]))
    if Path(args.settings).is_file():
        defaults.update(json.loads(Path(args.settings).read_text()))
    settings = argparse.Namespace(**defaults)

    model = load_recognizer(args.model)
    data = load_utterances(args.data, "test")
    chosen, originals, targets = select(model, data, args.n, settings.seed)
    wav, lengths = pad_batch([data.waves[i] for i in chosen])
    clean = sphinx_transcribe([data.waves[i].numpy() for i in chosen])
    rows, lines = [], []
    clean_wer = wer(originals, clean)
    lines += [f"pocketsphinx on {len(chosen)} clean `{args.data}` test utterances: WER {clean_wer:.2f} to the "
              f"transcript (eSpeak voices are far from its training data)", "",
              "| attack | fools our model | pocketsphinx WER to original | pocketsphinx WER to target | "
              "pocketsphinx hears the target |", "|---|---|---|---|---|"]
    for cfg in args.configs.split(","):
        name, _, sp = cfg.partition("+sparse")
        attack = ATTACKS[name] if not sp else sparse(ATTACKS[name], float(sp), ramp=settings.ramp)
        info: dict = {}
        adv = attack(model, wav, targets, lengths=lengths, info=info, **attack_kwargs(name, settings))
        rep = asr_report(model, wav, adv, targets, originals, lengths, info)
        heard = sphinx_transcribe([adv[k, :int(lengths[k])].numpy() for k in range(len(chosen))])
        ok = [k for k, r in enumerate(rep) if r["success"]]
        for k, r in enumerate(rep):
            rows.append({"config": cfg, "utt": chosen[k], "ours": r["decoded"], "target": targets[k],
                         "original": originals[k], "sphinx_clean": clean[k], "sphinx_adv": heard[k],
                         "success": r["success"], "snr_db": r["snr_db"]})
        w_orig = wer([originals[k] for k in ok], [heard[k] for k in ok]) if ok else float("nan")
        w_tgt = wer([targets[k] for k in ok], [heard[k] for k in ok]) if ok else float("nan")
        hits = sum(heard[k] == targets[k] for k in ok)
        lines.append(f"| {cfg} | {len(ok)}/{len(chosen)} | {w_orig:.2f} | {w_tgt:.2f} | {hits}/{len(ok)} |")
        print(lines[-1], flush=True)
    with open(out / "pocketsphinx.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    (out / "pocketsphinx.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
