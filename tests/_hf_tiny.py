"""A tiny randomly initialised Hugging Face Wav2Vec2ForCTC saved as a user's local folder (for the
adapter and CLI tests; needs the `hf` extra, so callers importorskip transformers first)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: i + 5 for i, c in enumerate("ETAOINSHRDLU")}}


def save_tiny_wav2vec2(folder: Path, seed: int = 0) -> dict:
    """Write config, weights and vocab.json into `folder`; returns the vocabulary."""
    import transformers
    cfg = transformers.Wav2Vec2Config(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
                                      conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8,
                                      num_conv_pos_embedding_groups=2, pad_token_id=0, feat_extract_norm="layer",
                                      do_stable_layer_norm=True)
    torch.manual_seed(seed)
    transformers.Wav2Vec2ForCTC(cfg).save_pretrained(folder)
    (Path(folder) / "vocab.json").write_text(json.dumps(VOCAB))
    return VOCAB
