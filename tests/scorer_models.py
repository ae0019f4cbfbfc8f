"""Tiny real models and a tokenizer trained on the spot, for the scorer tests.

Nothing is downloaded: a byte-level BPE is trained in well under a second and wrapped
in ``PreTrainedTokenizerFast``; Llama-architecture models are built from a config with
random weights (a larger init range than usual so scores differ visibly between inputs)
and written with ``save_pretrained`` so scorers load them by path, as users do.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import LlamaConfig, PreTrainedTokenizerFast  # noqa: E402

PRM_SEPARATOR = "<extra_0>"
STEP_TAG = " ки"
CORPUS = [
    "Step 1: 2 + 2 = 4. Step 2: so the answer is 4.",
    "计算 3 × 7 = 21，所以答案是 21。",
    "Café crème, naïve façade, déjà vu — résumé.",
    "Let x = 5 🙂 then x² = 25 🎉 done + - + -",
    "The final answer is \\boxed{42}. Answer: 7/3",
]

MIXED_SAMPLES = [  # (prompt, response): mixed lengths, Chinese, emoji, accents
    ("What is 2+2?", "4"),
    ("计算 3 × 7。", "3 × 7 = 21\n\n所以答案是 21。"),
    ("Solve: x² = 25 🙂", "Take roots.\n\nx = 5 or x = -5 🎉\n\nBoth work, déjà vu."),
    ("Résumé of the naïve café problem, step by step please, with every detail written out",
     "Step 1: count cafés.\n\nStep 2: 计算 12 + 30 = 42.\n\nStep 3: answer 42 🙂.\n\nStep 4: done."),
    ("Short", "Ok."),
]


def train_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with a pad token and the PRM marker tokens as special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["[PAD]", "<s>", "</s>", PRM_SEPARATOR, STEP_TAG],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=[PRM_SEPARATOR, STEP_TAG],
    )


def tiny_config(tokenizer: PreTrainedTokenizerFast, **overrides) -> LlamaConfig:
    fields = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.3,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def save_tiny_model(model_class, path: Path, tokenizer: PreTrainedTokenizerFast, seed: int = 0, **config) -> Path:
    """Build ``model_class`` from a tiny config, save it and the tokenizer to ``path``."""
    torch.manual_seed(seed)
    model = model_class(tiny_config(tokenizer, **config)).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
