"""Evaluation metrics that are not signal math (transcript error rates)."""
from .text import cer, edit_distance, wer

__all__ = ["cer", "edit_distance", "wer"]
