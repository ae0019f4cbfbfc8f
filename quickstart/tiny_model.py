"""The quickstart's policy: a one-million-parameter Qwen2 and a tokenizer for it.

Both are ordinary Hugging Face objects (``Qwen2ForCausalLM``, ``PreTrainedTokenizerFast``),
saved with ``save_pretrained``, so the rollout engine, the reward services and checkpoints
treat them exactly like a downloaded model. Nothing is downloaded: the tokenizer is a
byte-level BPE trained in well under a second on task text, the model is built from a config.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``texts``, with every digit kept a token of its own.

    Splitting digits first (as Llama and Qwen do) keeps ``17`` and ``71`` from becoming
    unrelated merged tokens, which is what lets a tiny model learn column arithmetic. The
    256 byte symbols are always in the vocabulary, so any text still encodes.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )


def tiny_model_config(
    vocab_size: int,
    *,
    hidden_size: int = 128,
    num_hidden_layers: int = 4,
    intermediate_size: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> Qwen2Config:
    """A Qwen2-style causal LM config small enough to train on two CPU cores in minutes.

    Grouped-query attention (4 query heads, 2 key/value heads), SwiGLU MLP (4x width by default),
    RoPE, tied input/output embeddings: the shape of a real Qwen2, scaled down.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if hidden_size % 4:
        raise ValueError(f"hidden_size must be a multiple of the 4 attention heads, got {hidden_size}")
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
    )
