"""Tiny real models and tokenizers for tests: built from a config, no downloads.

    model_dir = build_tiny_policy(tmp_path / "policy")      # Qwen2, hidden 64, 2 layers
    tok = build_tokenizer()                                 # byte-level BPE, trained in ~1 s

Everything is seeded, so two calls build the same weights.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

EOS = "<|endoftext|>"
PAD = "<|pad|>"

# A small corpus with digits, arithmetic, step separators and a few non-ASCII characters,
# so the BPE has multi-byte tokens and merges across the usual step boundaries.
_CORPUS = [
    "Question: what is 12 + 7? Answer: 19",
    "Step 1: add the units.\n\nStep 2: carry the ten.\n\nThe answer is 42.",
    "yes yes no maybe yes. the cat sat on the mat.",
    "Let x = 3. Then 2x = 6, so x² = 9 and √9 = 3 — done ✓",
    "héllo wörld, naïve café; 数学 问题 答案",
    " ".join(str(i) for i in range(200)),
    "+ - * / = ( ) [ ] { } < > , . ; : ! ?",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@functools.lru_cache(maxsize=4)
def _trained_bpe(vocab_size: int) -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok.to_str()  # cached as JSON: a Tokenizer object is mutable


def build_tokenizer(vocab_size: int = 400, chat_template: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with EOS and PAD tokens (and optionally a chat template)."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_bpe(vocab_size)),
        eos_token=EOS,
        pad_token=PAD,
    )
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_policy(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int = 400,
    seed: int = 0,
    chat_template: bool = False,
    tie_word_embeddings: bool = True,
) -> Path:
    """Save a randomly initialised tiny Qwen2 causal LM and its tokenizer to ``out_dir``.
    (4 attention heads: vLLM's CPU attention needs a head dim of 32 or more, hidden_size >= 128.)"""
    out_dir = Path(out_dir)
    tok = build_tokenizer(vocab_size, chat_template=chat_template)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie_word_embeddings,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
