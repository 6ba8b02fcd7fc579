"""audioadv: adversarial robustness of audio models.

Attacks (per-example, sparse, universal), certification by randomized smoothing,
audibility metrics and reports, on raw 16 kHz waveforms in [-1, 1].
"""
__version__ = "0.1.0"
