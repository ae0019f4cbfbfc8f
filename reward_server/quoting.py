"""How error messages quote client data and user values: cut short.

Errors name the sample and the value that is wrong, but a quoted 12,000-character id or
an 89 MB list would make the message (a gRPC status trailer, a per-sample error, a log
line) too big to deliver, turning a clear INVALID_ARGUMENT into RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import reprlib

_SHORT = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHORT.maxstring = _SHORT.maxother = 72
_SHORT.maxlist = _SHORT.maxtuple = 8
_SHORT.maxdict, _SHORT.maxlevel = 4, 2


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages quote client data and
    user values, and a quoted 12,000-character id or a huge list must not make the
    message (a gRPC trailer, a log line) too big to deliver."""
    text = _SHORT.repr(value)  # reprlib: a huge list or string is never rendered in full
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
