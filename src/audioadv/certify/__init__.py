"""Certified robustness: randomized smoothing at the waveform, spectrogram or filterbank (`smoothing.py`)."""
from .smoothing import (Smooth, NoisySoftmax, split_model, lower_confidence_bound, radius, max_radius,
                        certified_accuracy, REPRESENTATIONS)

__all__ = ["Smooth", "NoisySoftmax", "split_model", "lower_confidence_bound", "radius", "max_radius",
           "certified_accuracy", "REPRESENTATIONS"]
from .runner import certify_dataset, read_results, summarize, results_name, RADII

__all__ += ["certify_dataset", "read_results", "summarize", "results_name", "RADII"]
