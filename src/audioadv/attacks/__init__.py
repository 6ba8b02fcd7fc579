"""Adversarial attacks, one function each in the adv_lib style:
`attack(model, inputs, labels, *, targeted=False, **paper_defaults) -> adv_inputs`, batched,
waveforms kept in [-1, 1], `seed=` for anything random. Inputs may be a (B, T) tensor or a
dict holding it under "audio".
"""
from .pgd import fgsm, pgd, pgd_l2, pgd_linf

__all__ = ["fgsm", "pgd", "pgd_linf", "pgd_l2"]

# Minimal-norm attacks and universal perturbations (Abdoli et al.).
from .cw import cw_l2  # noqa: E402
from .ddn import ddn  # noqa: E402
from .deepfool import deepfool  # noqa: E402
from . import universal  # noqa: E402

__all__ += ["ddn", "deepfool", "cw_l2", "universal"]

# Speech-to-text attacks on CTC recognisers and the sparse (l0 proximal) wrapper: these return
# (adv_inputs, records), one dict per utterance (success, first_success, iterations, bound, loss, seconds).
from .cw_ctc import cw_ctc  # noqa: E402
from .imperceptible import imperceptible  # noqa: E402
from .ipc import ipc  # noqa: E402
from .sparse import HardThreshold, hard_threshold, sparse  # noqa: E402

__all__ += ["cw_ctc", "imperceptible", "ipc", "sparse", "HardThreshold", "hard_threshold"]

# Masked sparse attacks on audio-visual inputs (one binary mask per modality): returns (adv_inputs, records).
from .msae import msae  # noqa: E402
from .msae_baselines import l0_proximal, topk_dense  # noqa: E402

__all__ += ["msae", "topk_dense", "l0_proximal"]
