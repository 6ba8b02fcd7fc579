"""Per-utterance results of an attack on a speech recogniser: transcripts, success, error rates
to the target and to the original transcript, loudness and sparsity of the perturbation, plus
what the attack recorded per utterance (iterations, seconds, final bound...)."""
from __future__ import annotations

from typing import Sequence

import torch

from .attacks._ctc import normalize_texts
from .attacks._util import split_inputs
from .metrics import cer, db_x, l0, linf, snr, wer
from .models.asr import transcribe


@torch.no_grad()
def asr_report(model, clean, adv, targets: Sequence[str], originals: Sequence[str], lengths=None,
               records: Sequence[dict] | None = None, *, tol: float = 0.0) -> list[dict]:
    """One row per utterance: decoded transcript, success (decoded == target), WER / CER to the
    target and to the original transcript, SNR, dB_x, l0 (fraction of samples changed), linf,
    num_samples, and the attack's record of it (`records`, as the attacks return them; its own
    `success` flag is kept as `attack_success`)."""
    x, _ = split_inputs(clean)
    a, _ = split_inputs(adv)
    if records is not None and len(records) != len(x):
        raise ValueError(f"asr_report: {len(records)} records for {len(x)} utterances")
    if lengths is None:
        lengths = torch.full((len(x),), x.shape[1], dtype=torch.long)
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=x.device)
    hyps = transcribe(model, a, lengths)
    tg, og = normalize_texts(model, targets), normalize_texts(model, originals)
    out = []
    for i in range(len(x)):
        n = int(lengths[i])
        xi, di = x[i:i + 1, :n], (a[i:i + 1, :n] - x[i:i + 1, :n])
        row = {
            "decoded": hyps[i], "target": tg[i], "original": og[i], "success": hyps[i] == tg[i],
            "wer_target": wer(tg[i], hyps[i]), "cer_target": cer(tg[i], hyps[i]),
            "wer_original": wer(og[i], hyps[i]), "cer_original": cer(og[i], hyps[i]),
            "snr_db": float(snr(xi, di)[0]), "db_x": float(db_x(xi, di)[0]),
            "l0": float(l0(di, tol=tol)[0]), "linf": float(linf(di)[0]), "num_samples": n,
        }
        if records is not None:
            rec = dict(records[i])
            if "success" in rec:
                rec["attack_success"] = rec.pop("success")
            row.update(rec)
        out.append(row)
    return out
