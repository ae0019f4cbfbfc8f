"""Steps to tokens: where each reasoning step's reward goes.

The learner turns response tokens into text once, with ``decode_with_offsets``, and
sends that text to the reward services; the process service answers with one score per
step and the step's UTF-8 byte span in that text. ``reward_token_indices`` maps each span
to its reward token. A score one token off is a silent bug, so the mapping is exact and
checked: the text is verified against the tokenizer's own ``decode`` and a tokenizer
whose decoder cannot be mapped token by token raises ``TokenAlignmentError``.

Token end offsets (the rule everything rests on):
    token_end_bytes[i] = the number of bytes of ``text`` that are complete once tokens
    0..i are decoded. A token holding only the first part of a multi-byte character
    (byte-level BPE) completes nothing: its end stays at the previous character
    boundary, and the token that completes the character ends after it. Special tokens
    are skipped by the decode and add nothing. Offsets never decrease.

Reward token of a span [start, end): the first token i with token_end_bytes[i] >= end,
i.e. the token that completes the span's last character. Hence decoding tokens 0..i
gives text containing the whole step and decoding tokens 0..i-1 does not.

Steps that get no reward token (``step_reward_tokens``):
- an empty span (no last byte to place a score on);
- the unfinished last step of a truncated response (no EOS): the last step whose text is
  not followed by the separator was cut off mid-step, so its score judges text the
  policy never finished. Whether the truncated response itself is penalised or dropped
  is the advantage computation's choice (truncated_outcome / drop_truncated).
Whitespace-only spans are placed like any other (the service chose to score them; the
shared ``split_steps`` never produces them). A span that ends past the text raises: the
service scored a different text.
"""

from __future__ import annotations

import bisect
import codecs
import json
import os
import re
import weakref
from collections.abc import Callable, Sequence
from itertools import accumulate

import numpy as np

from reward_server.types import Span

Pieces = list[bytes]


class TokenAlignmentError(ValueError):
    """The tokenizer's decode cannot be split into exact per-token pieces."""


# Per-token cleanups of the WordPiece decoder (tokenizers' decoders/wordpiece.rs) and the
# whole-text cleanup of transformers' clean_up_tokenization, in their order.
_WORDPIECE_CLEANUP = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
    (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)  # fmt: skip
_TRANSFORMERS_CLEANUP = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
    (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)  # fmt: skip
_BYTE_FALLBACK = re.compile(rb"<0x([0-9A-Fa-f]{2})>")


def _gpt2_char_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable stand-in character of each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


# A decoder step maps one token's piece to its output; ``first`` is True for the first
# token that is not skipped (Metaspace and WordPiece treat it differently).
PieceStep = Callable[[bytes, bool], bytes]


def _byte_level(spec: dict) -> PieceStep:
    table = _gpt2_char_to_byte()

    def one(piece: bytes, first: bool) -> bytes:
        token = piece.decode("utf-8")
        # tokenizers: a token with any character outside the table passes as UTF-8.
        return bytes(table[c] for c in token) if all(c in table for c in token) else piece

    return one


def _metaspace(spec: dict) -> PieceStep:
    marker = spec.get("replacement", "▁").encode("utf-8")
    strip_first = spec.get("prepend_scheme", "always") != "never"
    # tokenizers drops every marker of the first token (not only a leading one).
    return lambda p, first: p.replace(marker, b"" if first and strip_first else b" ")


def _wordpiece(spec: dict) -> PieceStep:
    prefix = spec.get("prefix", "##").encode("utf-8")
    cleanup = spec.get("cleanup", True)

    def one(p: bytes, first: bool) -> bytes:
        if not first:
            p = p[len(prefix) :] if p.startswith(prefix) else b" " + p
        if cleanup:
            for old, new in _WORDPIECE_CLEANUP:
                p = p.replace(old.encode(), new.encode())
        return p

    return one


def _replace(spec: dict) -> PieceStep:
    pattern = spec["pattern"]
    if "String" not in pattern:
        raise TokenAlignmentError(f"Replace decoder with a regex pattern {pattern} is not supported")
    old, new = pattern["String"].encode("utf-8"), spec["content"].encode("utf-8")
    return lambda p, first: p.replace(old, new)


def _byte_fallback(spec: dict) -> Callable[[Pieces], Pieces]:
    """<0xXX> tokens become their byte. As in tokenizers, a run of byte tokens that is not
    valid UTF-8 by itself becomes one U+FFFD per byte token instead."""

    def flush(run: Pieces, out: Pieces) -> None:
        try:
            b"".join(run).decode("utf-8")
        except UnicodeDecodeError:
            run = ["\ufffd".encode()] * len(run)
        out.extend(run)
        run.clear()

    def apply(pieces: Pieces) -> Pieces:
        out: Pieces = []
        run: Pieces = []
        for p in pieces:
            match = _BYTE_FALLBACK.fullmatch(p)
            if match:
                run.append(bytes([int(match.group(1), 16)]))
                continue
            flush(run, out)
            out.append(p)
        flush(run, out)
        return out

    return apply


def _strip_run(data: bytes, content: bytes, count: int, left: bool) -> int:
    """How many bytes of up to ``count`` copies of ``content`` start (or end) ``data``."""
    cut = 0
    for _ in range(count):
        window = data[cut : cut + len(content)] if left else data[len(data) - cut - len(content) : len(data) - cut]
        if window != content:
            break
        cut += len(content)
    return cut


def _strip_piece(spec: dict) -> PieceStep:
    content = spec["content"].encode("utf-8")
    start, stop = spec.get("start", 0), spec.get("stop", 0)
    return lambda p, first: p[_strip_run(p, content, start, True) : len(p) - _strip_run(p, content, stop, False)]


def _strip_whole(spec: dict) -> Callable[[Pieces], Pieces]:
    """Strip after Fuse acts on the joined text: cut from the first and last non-empty pieces."""
    content = spec["content"].encode("utf-8")
    start, stop = spec.get("start", 0), spec.get("stop", 0)

    def apply(pieces: Pieces) -> Pieces:
        out = list(pieces)
        for i in range(len(out)):
            if out[i]:
                out[i] = out[i][_strip_run(out[i], content, start, True) :]
                break
        for i in reversed(range(len(out))):
            if out[i]:
                out[i] = out[i][: len(out[i]) - _strip_run(out[i], content, stop, False)]
                break
        return out

    return apply


_PIECE_STEPS: dict[str, Callable[[dict], PieceStep]] = {
    "ByteLevel": _byte_level,
    "Metaspace": _metaspace,
    "WordPiece": _wordpiece,
    "Replace": _replace,
}
# Steps that need the neighbouring tokens; no per-token step may follow them.
_LIST_STEPS: dict[str, Callable[[dict], Callable[[Pieces], Pieces]]] = {
    "ByteFallback": _byte_fallback,
    "Strip": _strip_whole,  # only after Fuse; before it Strip is per token
}


def _decoder_steps(spec: dict | None) -> tuple[list[PieceStep], list[Callable[[Pieces], Pieces]]]:
    """The decoder as per-token steps followed by whole-text steps (Strip after Fuse)."""
    if spec is None:
        raise TokenAlignmentError("the tokenizer has no decoder (tokens are joined with spaces); give it one")
    per_piece: list[PieceStep] = []
    whole: list[Callable[[Pieces], Pieces]] = []
    fused = False
    subs = spec["decoders"] if spec["type"] == "Sequence" else [spec]
    for n, sub in enumerate(subs):
        kind = sub["type"]
        if kind == "Fuse":
            fused = True  # joining changes nothing by itself; later steps see the whole text
        elif kind == "Strip" and not fused:
            per_piece.append(_strip_piece(sub))
        elif kind in _PIECE_STEPS and not whole and not fused:
            per_piece.append(_PIECE_STEPS[kind](sub))
        elif kind in _LIST_STEPS and (fused or kind != "Strip"):
            whole.append(_LIST_STEPS[kind](sub))
        else:
            raise TokenAlignmentError(
                f"decoder {kind!r}{f' (step {n} of a Sequence)' if len(subs) > 1 else ''} cannot be "
                "mapped token by token there; "
                f"supported: {', '.join([*_PIECE_STEPS, *_LIST_STEPS, 'Fuse', 'Sequence'])}"
            )
    return per_piece, whole


def _round_down_to_characters(data: bytes, ends: list[int]) -> list[int]:
    """Each offset moved back to the start of the UTF-8 character it falls inside (valid
    UTF-8 only): a token that ends mid-character has completed nothing past it."""
    if not data:
        return ends
    arr = np.frombuffer(data, dtype=np.uint8)
    starts = np.flatnonzero((arr & 0xC0) != 0x80)  # bytes that begin a character
    starts = np.append(starts, len(data))
    at = np.asarray(ends, dtype=np.int64)
    return starts[np.searchsorted(starts, at, side="right") - 1].tolist()


def _replace_tracking_ends(text: str, ends: list[int], old: str, new: str) -> tuple[str, list[int]]:
    """str.replace(old, new) that also moves character offsets ``ends``. An offset inside
    a replaced occurrence keeps the part of it that old and new share as a prefix."""
    matches = [m.start() for m in re.finditer(re.escape(old), text)]
    if not matches:
        return text, ends
    shared = len(os.path.commonprefix([old, new]))
    delta = len(new) - len(old)
    moved = []
    for end in ends:
        before = bisect.bisect_right(matches, end - len(old))  # occurrences wholly before end
        inside = before < len(matches) and matches[before] < end
        offset = end + before * delta
        if inside:
            offset = matches[before] + before * delta + min(end - matches[before], shared)
        moved.append(offset)
    return text.replace(old, new), moved


class _OffsetDecoder:
    """Per-tokenizer plan: which ids to skip, the decoder steps, the whole-text cleanup."""

    def __init__(self, tokenizer) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TokenAlignmentError(
                f"{type(tokenizer).__name__} is not a fast tokenizer; load it with AutoTokenizer(use_fast=True)"
            )
        self.tokenizer = tokenizer
        self.backend = backend
        config = json.loads(backend.to_str())
        self.per_piece, self.whole = _decoder_steps(config.get("decoder"))
        self.special_ids = {i for i, tok in backend.get_added_tokens_decoder().items() if tok.special}
        cleanup = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
        # transformers skips the cleanup for BPE models unless forced (see its _decode).
        forced = getattr(tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)
        self.cleanup = cleanup and (type(backend.model).__name__ != "BPE" or forced)
        self._later_piece: dict[int, bytes] = {}  # id -> output piece when not the first token

    def _piece(self, token_id: int, first: bool) -> bytes:
        if not first and token_id in self._later_piece:
            return self._later_piece[token_id]
        token = self.backend.id_to_token(token_id)
        if token is None:
            raise ValueError(f"token id {token_id} is not in the tokenizer's vocabulary")
        piece = token.encode("utf-8")
        for step in self.per_piece:
            piece = step(piece, first)
        if not first:
            self._later_piece[token_id] = piece
        return piece

    def __call__(self, token_ids: Sequence[int]) -> tuple[str, list[int]]:
        ids = [int(i) for i in token_ids]
        kept = [i for i in ids if i not in self.special_ids]
        pieces = [self._piece(i, first=k == 0) for k, i in enumerate(kept)]
        for step in self.whole:
            pieces = step(pieces)
        data = b"".join(pieces)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text, kept_ends = self._decode_lossy(pieces)
        else:
            kept_ends = _round_down_to_characters(data, list(accumulate(map(len, pieces))))
        if self.cleanup:
            text, kept_ends = self._clean_up(text, kept_ends)
        self._verify(ids, text)
        return text, self._spread_to_all_tokens(ids, kept_ends)

    @staticmethod
    def _decode_lossy(pieces: Pieces) -> tuple[str, list[int]]:
        """Invalid UTF-8 (e.g. a response cut inside a character) decodes with U+FFFD, as
        the tokenizer does; an incremental decoder holds back an incomplete character
        until the token that completes it, which is the token-end rule."""
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        chunks = [utf8.decode(p) for p in pieces]
        if chunks:
            chunks[-1] += utf8.decode(b"", final=True)
        return "".join(chunks), list(accumulate(len(c.encode("utf-8")) for c in chunks))

    @staticmethod
    def _clean_up(text: str, byte_ends: list[int]) -> tuple[str, list[int]]:
        """transformers' clean_up_tokenization on the whole text, moving the token ends."""
        char_at_byte = {b: c for c, b in enumerate(accumulate((len(ch.encode("utf-8")) for ch in text), initial=0))}
        char_ends = [char_at_byte[e] for e in byte_ends]
        for old, new in _TRANSFORMERS_CLEANUP:
            text, char_ends = _replace_tracking_ends(text, char_ends, old, new)
        byte_at = [0, *accumulate(len(ch.encode("utf-8")) for ch in text)]
        return text, [byte_at[e] for e in char_ends]

    def _spread_to_all_tokens(self, ids: list[int], kept_ends: list[int]) -> list[int]:
        """Special tokens end where the previous token ended."""
        ends, last, k = [], 0, 0
        for i in ids:
            if i not in self.special_ids:
                last = kept_ends[k]
                k += 1
            ends.append(last)
        return ends

    def _verify(self, ids: list[int], text: str) -> None:
        expected = self.tokenizer.decode(ids, skip_special_tokens=True)
        if text != expected:
            at = next(
                (k for k, (a, b) in enumerate(zip(text, expected, strict=False)) if a != b),
                min(len(text), len(expected)),
            )
            raise TokenAlignmentError(
                f"cannot map {type(self.tokenizer).__name__} token by token: per-token decoding "
                f"gives {text[max(0, at - 10) : at + 10]!r} where decode() gives "
                f"{expected[max(0, at - 10) : at + 10]!r} (character {at}); please report this tokenizer"
            )


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def decode_with_offsets(tokenizer, token_ids: Sequence[int]) -> tuple[str, list[int]]:
    """The response text exactly as ``tokenizer.decode(ids, skip_special_tokens=True)``
    gives it, and for every token the UTF-8 byte offset in it where the token ends (see
    the module docstring for the rule). Linear in the number of tokens."""
    plan = _PLANS.get(tokenizer)
    if plan is None:
        plan = _PLANS[tokenizer] = _OffsetDecoder(tokenizer)
    return plan(token_ids)


def reward_token_indices(token_end_bytes: Sequence[int], spans: Sequence[Span]) -> list[int]:
    """For each span, the index of the first token whose end is >= the span's end: the
    token that completes the span's last character."""
    text_bytes = token_end_bytes[-1] if len(token_end_bytes) else 0
    indices = []
    for span in spans:
        if span.end <= span.start:
            raise ValueError(f"span [{span.start}, {span.end}) is empty: it has no last byte to place a score on")
        if span.end > text_bytes:
            raise ValueError(
                f"span [{span.start}, {span.end}) ends past the decoded response ({text_bytes} bytes): "
                "the reward service scored a different text than decode_with_offsets produced"
            )
        indices.append(bisect.bisect_left(token_end_bytes, span.end))
    return indices


def step_reward_tokens(
    text: str,
    token_end_bytes: Sequence[int],
    spans: Sequence[Span],
    scores: Sequence[float],
    *,
    truncated: bool,
    separator: str | re.Pattern[str] = "\n\n",
) -> tuple[list[int], list[float]]:
    """(reward token, score) of every step that gets one, applying the module's rules:
    empty spans and a truncated response's unfinished last step are dropped."""
    if len(spans) != len(scores):
        raise ValueError(f"{len(spans)} step spans but {len(scores)} step scores")
    kept = [(s, v) for s, v in zip(spans, scores, strict=True) if s.end > s.start]
    if truncated and kept:
        last = max(range(len(kept)), key=lambda k: kept[k][0].end)
        if not _separator_follows(text, kept[last][0].end, separator):
            kept.pop(last)
    indices = reward_token_indices(token_end_bytes, [s for s, _ in kept])
    return indices, [float(v) for _, v in kept]


def _separator_follows(text: str, end_byte: int, separator: str | re.Pattern[str]) -> bool:
    rest = text.encode("utf-8")[end_byte:].decode("utf-8", errors="replace")
    if isinstance(separator, str):
        return separator in rest
    return separator.search(rest) is not None
