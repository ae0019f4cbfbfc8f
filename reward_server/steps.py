"""Splitting a response into reasoning steps, as UTF-8 byte spans.

Both sides use this: a process reward service splits responses that arrive without
steps, and the learner maps the returned spans to tokens. Spans are byte offsets
into ``response.encode("utf-8")`` because bytes are what every language and every
tokenizer agree on.

Rules (documented because a PRM score one step off is a silent bug):
- The separator (a literal string, or a compiled regex) is not part of any step.
- Leading and trailing whitespace of a step is not part of its span, so the span ends
  at the last visible character of the step.
- Steps that are empty or whitespace-only produce no span.
"""

from __future__ import annotations

import re

from reward_server.types import Span

_WS = re.compile(r"\S(?:.*\S)?", re.DOTALL)


def split_steps(response: str, separator: str | re.Pattern[str] = "\n\n") -> list[Span]:
    """Return the byte spans of the non-blank steps of ``response``, in order."""
    if isinstance(separator, str):
        if not separator:
            raise ValueError("step separator must be a non-empty string or a regex")
        pattern = re.compile(re.escape(separator))
    else:
        pattern = separator
    spans: list[Span] = []
    char_start = 0
    pieces: list[tuple[int, int]] = []
    for match in pattern.finditer(response):
        if match.end() == match.start():
            continue  # an empty match would split nothing
        pieces.append((char_start, match.start()))
        char_start = match.end()
    pieces.append((char_start, len(response)))
    # Character offsets -> byte offsets in one pass: each stretch of text is encoded once
    # (ASCII text needs no encoding at all), so this is linear in the response.
    ascii_only = response.isascii()
    char_at, byte_at = 0, 0  # a character offset and its byte offset, moving forward

    def to_bytes(char: int) -> int:
        nonlocal char_at, byte_at
        if not ascii_only:
            byte_at += len(response[char_at:char].encode("utf-8"))
            char_at = char
            return byte_at
        return char

    for start, end in pieces:
        visible = _WS.search(response, start, end)
        if visible is None:
            continue
        b_start = to_bytes(visible.start())
        spans.append(Span(b_start, to_bytes(visible.end())))
    return spans


def span_text(response: str, span: Span) -> str:
    """The text of ``span``; raises ValueError if it does not cut on UTF-8 boundaries."""
    data = response.encode("utf-8")
    if not (0 <= span.start <= span.end <= len(data)):
        raise ValueError(f"span [{span.start}, {span.end}) is outside the response ({len(data)} bytes)")
    try:
        return data[span.start : span.end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"span [{span.start}, {span.end}) does not start and end on UTF-8 character boundaries"
        ) from exc


def span_texts(response: str, spans: list[Span]) -> list[str]:
    """The text of every span, encoding the response once (``span_text`` for each span
    would encode it once per span). Raises ValueError naming the first bad span."""
    data = response.encode("utf-8")
    texts = []
    for k, span in enumerate(spans):
        if not (0 <= span.start <= span.end <= len(data)):
            raise ValueError(f"step {k}: span [{span.start}, {span.end}) is outside the response ({len(data)} bytes)")
        try:
            texts.append(data[span.start : span.end].decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError(
                f"step {k}: span [{span.start}, {span.end}) does not start and end on UTF-8 character boundaries"
            ) from None
    return texts
