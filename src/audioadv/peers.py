"""The peers' implementations behind audioadv's own call, so that experiment files compare libraries on equal terms.

An experiment job with `library = "foolbox"` or `library = "art"` runs the peer's attack through one of these
wrappers: the same inputs (waveforms in [-1, 1]), the same labels, and the same keyword parameters with the same
defaults as audioadv's function of that name (each wrapper takes its signature from it, so a default lives in
one place), mapped onto the peer's arguments. Parameters the peer has no counterpart for must stay at their
defaults. Needs the `bench` extra (adversarial-robustness-toolbox 1.20.1, foolbox 3.3.4).
"""
from __future__ import annotations

import inspect
import math
import random

import numpy as np
import torch

from . import attacks
from .attacks import universal

LIBRARIES = ("audioadv", "foolbox", "art")
UNIVERSAL_METHODS = ("penalty", "penalty_search", "iterative")   # audioadv.attacks.universal's crafting methods


def _like(ours, keep: tuple):
    """Give a wrapper audioadv's signature (and so its defaults), restricted to the parameters in `keep`
    (those the peer has a counterpart for); the wrapper reads them with `_bind`."""
    sig = inspect.signature(ours)
    params = [p for name, p in sig.parameters.items()
              if p.kind is not p.KEYWORD_ONLY or name in keep]

    def deco(fn):
        fn.__signature__ = sig.replace(parameters=params)
        fn.__doc__ = (fn.__doc__ or "") + f"\n\nParameters and defaults: those of audioadv's {ours.__name__}."
        fn.peer_of = ours
        return fn
    return deco


def _bind(fn, kwargs: dict) -> dict:
    """kwargs checked against fn's signature, every default filled in."""
    params = {n: p for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise TypeError(f"{fn.__name__}: no parameter {', '.join(unknown)} (the peer has no counterpart)")
    return {**{n: p.default for n, p in params.items()}, **kwargs}


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ValueError(f"library {module!r} is not installed: pip install 'audioadv[bench]'") from None


# foolbox ---------------------------------------------------------------------------------------------------------
def _foolbox_run(model, inputs, labels, targeted: bool, attack):
    fb = _need("foolbox")
    x = inputs.detach()
    fmodel = fb.PyTorchModel(model.eval(), bounds=(-1.0, 1.0), device=x.device)
    criterion = fb.criteria.TargetedMisclassification(labels) if targeted else fb.criteria.Misclassification(labels)
    _, clipped, _ = attack(fmodel, x, criterion, epsilons=None)
    return clipped.detach()


@_like(attacks.ddn, keep=("targeted", "steps", "init_norm", "gamma"))
def foolbox_ddn(model, inputs, labels, **kw):
    """foolbox's DDNAttack."""
    fb, k = _need("foolbox"), _bind(foolbox_ddn, kw)
    return _foolbox_run(model, inputs, labels, k["targeted"],
                        fb.attacks.DDNAttack(init_epsilon=k["init_norm"], steps=k["steps"], gamma=k["gamma"]))


@_like(attacks.deepfool, keep=("targeted", "steps", "overshoot", "candidates"))
def foolbox_deepfool(model, inputs, labels, **kw):
    """foolbox's L2DeepFoolAttack (untargeted only)."""
    fb, k = _need("foolbox"), _bind(foolbox_deepfool, kw)
    if k["targeted"]:
        raise ValueError("foolbox's DeepFool is untargeted only")
    return _foolbox_run(model, inputs, labels, False, fb.attacks.L2DeepFoolAttack(
        steps=k["steps"], candidates=k["candidates"], overshoot=k["overshoot"], loss="logits"))


@_like(attacks.cw_l2, keep=("targeted", "c", "kappa", "steps", "binary_search_steps", "lr", "abort_early"))
def foolbox_cw_l2(model, inputs, labels, **kw):
    """foolbox's L2CarliniWagnerAttack."""
    fb, k = _need("foolbox"), _bind(foolbox_cw_l2, kw)
    return _foolbox_run(model, inputs, labels, k["targeted"], fb.attacks.L2CarliniWagnerAttack(
        binary_search_steps=k["binary_search_steps"], steps=k["steps"], stepsize=k["lr"], confidence=k["kappa"],
        initial_const=k["c"], abort_early=k["abort_early"]))


# ART -------------------------------------------------------------------------------------------------------------
def art_classifier(model, length: int, num_classes: int):
    """ART's PyTorchClassifier around an audioadv classifier ((B, T) waveforms in [-1, 1] -> logits), on the
    model's device (ART moves the model to the device it is given)."""
    _need("art")
    from art.estimators.classification import PyTorchClassifier
    on_gpu = next(model.parameters()).is_cuda
    return PyTorchClassifier(model=model.eval(), loss=torch.nn.CrossEntropyLoss(), input_shape=(length,),
                             nb_classes=num_classes, clip_values=(-1.0, 1.0), device_type="gpu" if on_gpu else "cpu")


def _num_classes(model, x) -> int:
    n = getattr(model, "num_classes", None)
    if n:
        return int(n)
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


@_like(attacks.pgd, keep=("targeted", "eps", "norm", "steps", "alpha", "random_start", "seed"))
def art_pgd(model, inputs, labels, **kw):
    """ART's ProjectedGradientDescent (cross-entropy loss), with audioadv's step rule alpha = 2.5 eps / steps."""
    _need("art")
    from art.attacks.evasion import ProjectedGradientDescent
    k = _bind(art_pgd, kw)
    targeted, eps, norm, steps, alpha, seed = (k[n] for n in ("targeted", "eps", "norm", "steps", "alpha", "seed"))
    random_start = k["random_start"]
    x = inputs.detach()
    clf = art_classifier(model, x.shape[1], _num_classes(model, x))
    step = 2.5 * eps / steps if alpha is None else alpha
    if seed is not None:
        np.random.seed(seed)
    p = np.inf if str(norm).lower() in ("linf", "inf") else 2
    atk = ProjectedGradientDescent(clf, norm=p, eps=eps, eps_step=step, max_iter=steps, targeted=targeted,
                                   num_random_init=1 if random_start else 0, batch_size=len(x), verbose=False)
    y = np.eye(clf.nb_classes, dtype=np.float32)[labels.cpu().numpy()]
    return torch.from_numpy(atk.generate(x.cpu().numpy(), y=y)).to(x.device, x.dtype)


@_like(universal.iterative, keep=("targeted", "p", "xi", "delta", "max_passes", "attack", "seed", "progress"))
def art_universal(model, data, **kw):
    """ART's UniversalPerturbation (untargeted) or TargetedUniversalPerturbation, with its inner attacker
    (`attack`: ART's names, e.g. "deepfool", "fgsm", "pgd"; "ddn" is not in ART and maps to "deepfool") and its
    own default parameters; returns (v, history) like audioadv's methods."""
    _need("art")
    from art.attacks.evasion import TargetedUniversalPerturbation, UniversalPerturbation
    k = _bind(art_universal, kw)
    targeted, p, xi, delta, max_passes, attack, seed, progress = (
        k[n] for n in ("targeted", "p", "xi", "delta", "max_passes", "attack", "seed", "progress"))
    waves, labels = universal.as_tensors(data)
    clf = art_classifier(model, waves.shape[1], _num_classes(model, waves))
    if xi is None:
        xi = 0.12 if targeted is not None else 0.2
    name = {"ddn": "deepfool"}.get(attack, attack)
    random.seed(seed)
    np.random.seed(seed)
    norm = np.inf if math.isinf(p) else p
    if targeted is None:
        atk = UniversalPerturbation(clf, attacker=name, attacker_params={"verbose": progress}, delta=delta,
                                    max_iter=max_passes, eps=xi, norm=norm, batch_size=len(waves), verbose=progress)
        atk.generate(waves.numpy())
    else:
        atk = TargetedUniversalPerturbation(clf, attacker=name, attacker_params={"verbose": progress}, delta=delta,
                                            max_iter=max_passes, eps=xi, norm=norm)
        y = np.eye(clf.nb_classes, dtype=np.float32)[np.full(len(waves), int(targeted))]
        atk.generate(waves.numpy(), y=y)
    v = torch.from_numpy(np.asarray(atk.noise, dtype=np.float32).reshape(-1))
    return v, [{"iter": 0, "fooling_rate": float(getattr(atk, "fooling_rate", float("nan")))}]


PEERS = {("foolbox", "ddn"): foolbox_ddn, ("foolbox", "deepfool"): foolbox_deepfool,
         ("foolbox", "cw_l2"): foolbox_cw_l2, ("art", "pgd"): art_pgd, ("art", "iterative"): art_universal}


def get(library: str, name: str):
    """The function that runs attack `name` (or universal method `name`) of `library`."""
    if library == "audioadv":
        return getattr(universal, name) if name in UNIVERSAL_METHODS else getattr(attacks, name)
    if (library, name) not in PEERS:
        have = ", ".join(f"{lib} {n}" for lib, n in PEERS)
        raise ValueError(f"no {library} implementation of {name!r} (available: {have})")
    return PEERS[(library, name)]


__all__ = ["LIBRARIES", "get", "art_classifier", "foolbox_ddn", "foolbox_deepfool", "foolbox_cw_l2", "art_pgd",
           "art_universal"]
