"""`audioadv attack-asr`: targeted attacks on a speech recogniser (CW, Imperceptible, IPC; dense or
sparse), on WAV files or on a dataset with transcripts, with per-utterance results.

    audioadv attack-asr runs/asr --wav a.wav b.wav --target "call mom" --out runs/adv
    audioadv attack-asr runs/asr --data synth-phrases --n 20 --attack ipc --sparsity 0.4 --out runs/adv-ipc
    audioadv attack-asr runs/asr --data synth-phrases --n 20 --target-set open --out runs/adv-open

Writes OUT/adv/<id>.wav, OUT/results.jsonl (one row per utterance, written after every --save-every
utterances: decoded text, success, WER / CER to the target and to the original, SNR, dB_x, l0,
l_inf, and the attack's record: first success, iterations, final bound, seconds), OUT/settings.json and OUT/summary.json. A rerun with the same settings resumes
(utterances already in results.jsonl are skipped); other settings are refused unless --force.
"""
from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

ATTACKS = ("cw", "imperceptible", "ipc")


def register(sub) -> None:
    p = sub.add_parser("attack-asr", help="targeted attacks on a speech recogniser (CW, Imperceptible, IPC; dense or sparse)",
                       description="Run a targeted attack of audioadv.attacks (cw_ctc, imperceptible, ipc), optionally "
                                   "sparse (audioadv.attacks.sparse), on WAV files or dataset utterances, in padded "
                                   "batches of similar length. Every hyper-parameter not given is the attack's default.")
    p.add_argument("checkpoint", help="recogniser folder: audioadv's (model.safetensors + config.json) or a local "
                                      "Hugging Face Wav2Vec2ForCTC folder (recognised by its config.json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--attack", choices=ATTACKS, default="cw")
    p.add_argument("--sparsity", type=float, default=0.0, help="fraction of samples the perturbation must leave "
                                                              "untouched (l0 proximal step; 0 = dense)")
    src = p.add_argument_group("inputs (either --wav or --data)")
    src.add_argument("--wav", nargs="+", help="WAV files to attack (resampled to the recogniser's rate)")
    src.add_argument("--target", help="target transcript for every input")
    src.add_argument("--targets", help="text file with one target transcript per --wav file, in order")
    src.add_argument("--data", help="dataset spec with transcripts (synth-phrases, librispeech:PATH, manifest:FILE)")
    src.add_argument("--split", default="test")
    src.add_argument("--n", type=int, default=20, help="--data: utterances to attack (ones the recogniser gets right)")
    src.add_argument("--target-set", choices=["phrases", "open"], default="phrases",
                     help="--data without --target: another phrase of the set (default) or open-vocabulary words")
    a = p.add_argument_group("attack settings (default: the attack's own)")
    a.add_argument("--max-iter", type=int, help="iterations (Imperceptible: stage 1)")
    a.add_argument("--lr", type=float, help="Adam step (Imperceptible: stage 1)")
    a.add_argument("--tau", type=float, help="cw / imperceptible: initial l_inf bound")
    a.add_argument("--ratio", type=float, help="ipc: initial proportional bound")
    a.add_argument("--patience", type=int, help="an utterance stops once this many steps pass without a new success")
    a.add_argument("--stop-after", type=int, help="an utterance stops after this many successes")
    a.add_argument("--max-iter-stage2", type=int, help="imperceptible: stage-2 iterations")
    a.add_argument("--patience-stage2", type=int, help="imperceptible: leave stage 2 once the masking loss has not "
                                                      "improved by 1%% for this many steps")
    p.add_argument("--batch-size", type=int, help="utterances optimised together; a finished one's slot goes to the "
                                                  "next (the results do not depend on it; default: the attack's)")
    p.add_argument("--save-every", type=int, default=64,
                   help="utterances per attack call: results.jsonl is written after each, so a rerun resumes there")
    p.add_argument("--pcm16", action="store_true",
                   help="write 16-bit PCM WAVs and re-transcribe the written files (default: float32, bit-exact)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--force", action="store_true", help="start over even if --out holds results of other settings")
    p.set_defaults(func=run_attack_asr)


def attack_function(name: str, sparsity: float):
    from ..attacks import cw_ctc, imperceptible, ipc, sparse
    fn = {"cw": cw_ctc, "imperceptible": imperceptible, "ipc": ipc}[name]
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"--sparsity must lie in [0, 1), got {sparsity}")
    return (sparse(fn, sparsity) if sparsity > 0 else fn), fn


def attack_kwargs(args, fn) -> dict:
    """The settings given on the command line, under the attack's own argument names."""
    names = {"max_iter": "max_iter", "lr": "lr", "tau": "tau", "ratio": "ratio", "patience": "patience",
             "stop_after": "stop_after", "max_iter_stage2": "max_iter_stage2", "patience_stage2": "patience_stage2",
             "batch_size": "batch_size"}
    if args.attack == "imperceptible":
        names.update(max_iter="max_iter_stage1", lr="lr_stage1")
    params = inspect.signature(fn).parameters
    out = {}
    for opt, name in names.items():
        value = getattr(args, opt)
        if value is None:
            continue
        if name not in params:
            raise ValueError(f"--{opt.replace('_', '-')} does not apply to --attack {args.attack}")
        out[name] = value
    return out


def resolved_settings(fn, kwargs: dict) -> dict:
    """Every keyword default of the attack with the given ones applied (written to settings.json;
    not batch_size, which does not change the results)."""
    out = {}
    for name, prm in inspect.signature(fn).parameters.items():
        if prm.kind is prm.KEYWORD_ONLY and name not in ("lengths", "project", "batch_size"):
            value = kwargs.get(name, prm.default)
            out[name] = value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)
    return out


def load_inputs(args, model):
    """[(id, waveform, original transcript or None, target, metadata for the row)] from --wav or --data."""
    import torch

    if bool(args.wav) == bool(args.data):
        raise ValueError("give either --wav FILE... or --data SPEC")
    if args.target is not None and args.targets is not None:
        raise ValueError("give --target or --targets, not both")
    if args.target is not None and not args.target.strip():
        raise ValueError("--target is empty")
    if args.wav:
        from ..io import load
        if args.target is None and args.targets is None:
            raise ValueError("--wav needs --target TEXT or --targets FILE")
        if args.targets is not None:
            path = Path(args.targets)
            if not path.is_file():
                raise FileNotFoundError(f"--targets: {path} not found")
            lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
            if len(lines) != len(args.wav):
                raise ValueError(f"{path}: {len(lines)} target line(s) for {len(args.wav)} --wav file(s)")
            targets = lines
        else:
            targets = [args.target] * len(args.wav)
        sr = int(getattr(model, "sample_rate", 16000))
        seen: dict[str, int] = {}
        out = []
        for path, target in zip(args.wav, targets):
            stem = Path(path).stem
            seen[stem] = seen.get(stem, 0) + 1
            uid = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
            out.append((uid, load(path, sr), None, target, {"path": str(path)}))
        return out
    from ..asr_targets import open_targets, select
    from ..data.utterances import load_utterances
    if args.n < 1:
        raise ValueError("--n must be at least 1")
    data = load_utterances(args.data, args.split)
    ids, originals, targets = select(model, data, args.n, args.seed)
    if args.target is not None:
        targets = [args.target] * len(ids)
    elif args.target_set == "open":
        targets = open_targets(originals, args.seed)
    return [(str(i), data.waves[i].to(torch.float32), o, t, {"index": i}) for i, o, t in zip(ids, originals, targets)]


def run_attack_asr(args) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from ..asr_report import asr_report
    from ..data.utterances import pad_batch
    from ..io import load, save
    from ..models import load as load_model
    from ..models.asr import transcribe
    from ..results import dumps, json_safe

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    if args.save_every < 1:
        raise ValueError("--save-every must be at least 1")
    model, cfg = load_model(args.checkpoint)
    if not hasattr(model, "frame_logits"):
        raise ValueError(f"{args.checkpoint}: a {cfg['kind']} checkpoint, not a speech recogniser")
    fn, base = attack_function(args.attack, args.sparsity)
    kwargs = attack_kwargs(args, base)
    inputs = load_inputs(args, model)
    for uid, _, _, target, _ in inputs:
        if not model.encode_text(target):
            raise ValueError(f"target {target!r} (input {uid}) has no character the recogniser knows")

    out = Path(args.out)
    settings = {"checkpoint": str(args.checkpoint), "kind": cfg["kind"], "attack": args.attack,
                "sparsity": args.sparsity, "settings": resolved_settings(base, kwargs), "inputs": [i[0] for i in inputs],
                "targets": [i[3] for i in inputs], "pcm16": args.pcm16, "seed": args.seed}
    results = out / "results.jsonl"
    done: dict[str, dict] = {}
    if (out / "settings.json").is_file() and not args.force:
        old = json.loads((out / "settings.json").read_text())
        if old != settings:
            changed = sorted(k for k in settings if old.get(k) != settings[k])
            raise ValueError(f"{out} holds results of other settings ({', '.join(changed)} differ); "
                             "use another --out or --force")
        if results.is_file():
            for line in results.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    done[row["id"]] = row
    elif args.force and results.is_file():
        results.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / "adv").mkdir(exist_ok=True)
    (out / "settings.json").write_text(json.dumps(settings, indent=1))

    todo = sorted((i for i in inputs if i[0] not in done), key=lambda i: len(i[1]))
    if done:
        print(f"resuming: {len(done)} of {len(inputs)} utterances already in {results}", file=sys.stderr)
    batches = [todo[k:k + args.save_every] for k in range(0, len(todo), args.save_every)]
    sr = int(getattr(model, "sample_rate", 16000))
    with open(results, "a") as fh:
        for batch in tqdm(batches, desc=f"attack-asr {args.attack}", unit="batch", disable=not batches):
            wav, lengths = pad_batch([b[1] for b in batch])
            targets = [b[3] for b in batch]
            clean_hyps = transcribe(model, wav, lengths)
            originals = [b[2] if b[2] is not None else h for b, h in zip(batch, clean_hyps)]
            adv, records = fn(model, wav, targets, lengths=lengths, **kwargs)
            rows = asr_report(model, wav, adv, targets, originals, lengths, records)
            for j, (b, row, hyp) in enumerate(zip(batch, rows, clean_hyps)):
                uid, n = b[0], row["num_samples"]
                path = out / "adv" / f"{uid}.wav"
                save(path, adv[j, :n], sr, subtype="PCM_16" if args.pcm16 else "FLOAT")
                row = {"id": uid, **b[4], "clean_decoded": hyp, **row, "wav": str(path.relative_to(out))}
                if args.pcm16:  # what a listener gets: the quantised file, decoded again
                    again = transcribe(model, load(path, sr)[None], torch.tensor([n]))[0]
                    row["decoded_saved"], row["success_saved"] = again, again == row["target"]
                row = json_safe(row)        # an unchanged utterance has no finite SNR or dB_x: null
                fh.write(dumps(row) + "\n")
                fh.flush()
                done[uid] = row
    rows = [done[i[0]] for i in inputs if i[0] in done]
    ok = [r for r in rows if r["success"]]
    def mean(key, rs):              # None where a row has no value (an unperturbed utterance has no SNR)
        vals = [r[key] for r in rs if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None
    summary = {"utterances": len(rows), "successes": len(ok), "success_rate": len(ok) / max(len(rows), 1),
               "mean_snr_db": mean("snr_db", ok), "mean_db_x": mean("db_x", ok), "mean_l0": mean("l0", ok),
               "mean_first_success": mean("first_success", ok), "mean_iterations": mean("iterations", rows),
               "seconds": sum(r.get("seconds") or 0.0 for r in rows),
               "mean_cer_target": mean("cer_target", rows), "attack": args.attack, "sparsity": args.sparsity}
    if args.pcm16:
        summary["successes_saved"] = sum(bool(r.get("success_saved")) for r in rows)
    (out / "summary.json").write_text(dumps(summary, indent=1))
    print(dumps(summary, indent=1))
    return 0
