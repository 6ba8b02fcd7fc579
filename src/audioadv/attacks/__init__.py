"""Adversarial attacks, one function each in the adv_lib style:
`attack(model, inputs, labels, *, targeted=False, **paper_defaults) -> adv_inputs`, batched,
waveforms kept in [-1, 1], `seed=` for anything random. Inputs may be a (B, T) tensor or a
dict holding it under "audio".
"""
from .pgd import fgsm, pgd, pgd_l2, pgd_linf

__all__ = ["fgsm", "pgd", "pgd_linf", "pgd_l2"]
