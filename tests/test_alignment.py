"""Steps -> reward tokens on tokenizers trained here, on text with multi-byte characters.

The defining property, for every step of every text: decoding the tokens up to and
including the step's reward token gives text containing the whole step; decoding up to
the token before does not.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from reward_server.steps import split_steps
from reward_server.types import Span
from rpp_learner.alignment import (
    TokenAlignmentError,
    _gpt2_char_to_byte,
    decode_with_offsets,
    reward_token_indices,
    step_reward_tokens,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = [
    "step", "Die", "Lösung", "café", "naïve", "数学", "你好世界", "😀", "🚀", "👍🏽", "x=2", "2+2=4", "don't", "ünd"
]
CORPUS = [" ".join(WORDS[i:] + WORDS[:i]) + ". Then, why? ok! | \n\nNext step." for i in range(len(WORDS))] * 3
SPECIALS = ["<eos>", "<pad>"]


def _wrap(tok: Tokenizer, **kwargs) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", **kwargs)


def byte_level_bpe() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # A small vocabulary leaves many multi-byte characters split across tokens.
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens(["<calc>"])  # a non-special added token is decoded like any token
    return _wrap(tok)


def metaspace_unigram() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=150, special_tokens=["<unk>", *SPECIALS], unk_token="<unk>")
    tok.train_from_iterator(CORPUS, trainer)
    return _wrap(tok, unk_token="<unk>")


def llama_style_byte_fallback() -> PreTrainedTokenizerFast:
    """SentencePiece BPE as Llama 2 converts it: '▁' for spaces, <0xXX> byte tokens for
    characters outside the vocabulary, and a Replace/ByteFallback/Fuse/Strip decoder."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=120, special_tokens=SPECIALS, limit_alphabet=40))
    model = json.loads(tok.to_str())
    vocab = model["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    model["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(model))
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return _wrap(tok)


def wordpiece() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]", *SPECIALS]))
    return _wrap(tok, unk_token="[UNK]", clean_up_tokenization_spaces=True)


def char_level() -> PreTrainedTokenizerFast:
    chars = sorted({c for text in CORPUS for c in text} | set(" \n|;"))
    vocab = {t: i for i, t in enumerate(["<unk>", *SPECIALS, *chars])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<unk>", *SPECIALS])
    return _wrap(tok, unk_token="<unk>")


# (builder, step separator that survives the tokenizer's decode)
TOKENIZERS = {
    "byte_level_bpe": (byte_level_bpe, "\n\n"),
    "metaspace_unigram": (metaspace_unigram, "\n\n"),
    "llama_byte_fallback": (llama_style_byte_fallback, "\n\n"),
    # BERT's pre-tokenizer turns every whitespace run into one space: use a visible separator.
    "wordpiece": (wordpiece, " | "),
    "char_level": (char_level, "\n\n"),
}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer_case(request):
    build, separator = TOKENIZERS[request.param]
    return build(), separator


def assert_steps_align(tokenizer, ids: list[int], separator: str) -> int:
    text, ends = decode_with_offsets(tokenizer, ids)
    assert text == tokenizer.decode(ids, skip_special_tokens=True)
    assert len(ends) == len(ids)
    assert ends == sorted(ends) and ends[-1] == len(text.encode("utf-8"))
    spans = split_steps(text, separator)
    for span, k in zip(spans, reward_token_indices(ends, spans), strict=True):
        step = text.encode("utf-8")[: span.end]
        through = tokenizer.decode(ids[: k + 1], skip_special_tokens=True).encode("utf-8")
        before = tokenizer.decode(ids[:k], skip_special_tokens=True).encode("utf-8")
        assert through.startswith(step), (span, k, through, step)
        assert not before.startswith(step), (span, k, before, step)
    return len(spans)


ALPHABET = list("abcxyz019 .,?!'=+") + ["é", "ü", "ñ", "ç", "你", "好", "数", "学", "😀", "🚀", "👍🏽", "\n"]
step_text = st.lists(st.sampled_from(ALPHABET), max_size=12).map("".join)
steps_text = st.lists(step_text, min_size=1, max_size=5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=steps_text, leading_eos=st.booleans())
def test_every_step_ends_at_its_reward_token(tokenizer_case, pieces, leading_eos):
    tokenizer, separator = tokenizer_case
    text = separator.join(pieces)
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        return
    eos = tokenizer.eos_token_id
    ids = ([eos] if leading_eos else []) + ids + [eos]  # special tokens are skipped
    assert_steps_align(tokenizer, ids, separator)


def test_fixed_multibyte_text_places_every_step(tokenizer_case):
    tokenizer, separator = tokenizer_case
    steps = ["Lösung: 你好世界 😀", "naïve café, don't stop!", "数学 👍🏽 x=2."]
    ids = tokenizer.encode(separator.join(steps), add_special_tokens=False) + [tokenizer.eos_token_id]
    assert assert_steps_align(tokenizer, ids, separator) == 3


def test_byte_level_tokens_holding_part_of_a_character_do_not_end_it():
    tokenizer = byte_level_bpe()
    # '😀' is the 4 bytes F0 9F 98 80; spell it with the 4 single-byte tokens.
    byte_token = {b: c for c, b in _gpt2_char_to_byte().items()}
    ids = tokenizer.convert_tokens_to_ids(["a", *(byte_token[b] for b in "😀".encode())])
    text, ends = decode_with_offsets(tokenizer, ids)
    # 'a' ends at byte 1; the three tokens before the last complete nothing (still 1);
    # the token that completes the character ends after all of it: 1 + 4 = 5.
    assert text == "a😀" and ends == [1, 1, 1, 1, 5]
    assert reward_token_indices(ends, [Span(0, 5), Span(0, 1)]) == [4, 0]


def test_response_cut_inside_a_character_decodes_like_the_tokenizer():
    tokenizer = byte_level_bpe()
    byte_token = {b: c for c, b in _gpt2_char_to_byte().items()}
    # 'a' then 3 of the 4 bytes of '😀': the tokenizer shows the cut character as U+FFFD.
    ids = tokenizer.convert_tokens_to_ids(["a", *(byte_token[b] for b in "😀".encode()[:3])])
    text, ends = decode_with_offsets(tokenizer, ids)
    assert text == tokenizer.decode(ids) == "a\ufffd"
    # U+FFFD is 3 bytes, owned by the last token: 1 + 3 = 4
    assert ends == [1, 1, 1, 4]


def test_byte_fallback_cut_inside_a_character_decodes_like_the_tokenizer():
    tokenizer = llama_style_byte_fallback()
    cut = [f"<0x{b:02X}>" for b in "😀".encode()[:2]]  # 2 of the 4 bytes
    ids = tokenizer.convert_tokens_to_ids(["▁", *cut])
    text, ends = decode_with_offsets(tokenizer, ids)
    # tokenizers: an invalid run of byte tokens is one U+FFFD (3 bytes) per byte token;
    # "▁" -> " " is then stripped as the text's leading space: ends 0, 3, 6
    assert text == tokenizer.decode(ids) == "\ufffd\ufffd"
    assert ends == [0, 3, 6]


def test_wordpiece_cleanup_moves_token_ends():
    tokenizer = wordpiece()
    ids = tokenizer.convert_tokens_to_ids(["step", "'", "ok", "."])
    text, ends = decode_with_offsets(tokenizer, ids)
    # pieces "step" " '" " ok" "." (the decoder's own cleanup glued " ." to "."); then
    # transformers' clean-up turns " ' " into "'": "step'ok.". The "'" only appears once
    # " ok" is decoded (decode of the first two tokens is "step '"), so " '" ends at 4.
    assert text == tokenizer.decode(ids) == "step'ok."
    assert ends == [4, 4, 7, 8]


def test_truncated_unfinished_last_step_gets_no_reward_token():
    tokenizer = char_level()
    text = "st\n\nep\n\nok"
    ids = tokenizer.encode(text, add_special_tokens=False)
    decoded, ends = decode_with_offsets(tokenizer, ids)
    spans = split_steps(decoded)  # [0,2) [4,6) [8,10)
    # Finished response: every step placed at its last character: 't'=1, 'p'=5, 'k'=9.
    assert step_reward_tokens(decoded, ends, spans, [0.1, 0.2, 0.3], truncated=False) == ([1, 5, 9], [0.1, 0.2, 0.3])
    # Truncated: "ok" is not followed by the separator, so it was cut off: dropped.
    assert step_reward_tokens(decoded, ends, spans, [0.1, 0.2, 0.3], truncated=True) == ([1, 5], [0.1, 0.2])
    # Truncated right after a separator: the last step was finished and keeps its reward.
    ids2 = tokenizer.encode("st\n\nep\n\n", add_special_tokens=False)
    decoded2, ends2 = decode_with_offsets(tokenizer, ids2)
    spans2 = split_steps(decoded2)
    assert step_reward_tokens(decoded2, ends2, spans2, [0.1, 0.2], truncated=True) == ([1, 5], [0.1, 0.2])
    # Empty spans have no last byte: dropped.
    assert step_reward_tokens(decoded, ends, [Span(3, 3), spans[0]], [0.5, 0.1], truncated=False) == ([1], [0.1])


def test_span_past_the_text_is_a_clear_error():
    with pytest.raises(ValueError, match="ends past the decoded response"):
        reward_token_indices([1, 2, 3], [Span(0, 4)])
    with pytest.raises(ValueError, match="empty"):
        reward_token_indices([1, 2, 3], [Span(2, 2)])


def test_unmappable_decoder_is_refused():
    tok = Tokenizer(models.WordLevel(vocab={"a": 0, "b": 1, "<unk>": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.CTC()
    with pytest.raises(TokenAlignmentError, match="'CTC' cannot be mapped token by token"):
        decode_with_offsets(PreTrainedTokenizerFast(tokenizer_object=tok), [0, 1])
