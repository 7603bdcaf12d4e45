"""Compact JSON for the wire, shared by events, frames and errors.

``json.dumps(..., ensure_ascii=False, separators=(",", ":"))`` writes strings exactly as JavaScript's
``JSON.stringify`` does for every Unicode scalar value (checked over all of U+0000..U+FFFF and beyond):
``"`` and ``\\`` escaped, ``\\b \\f \\n \\r \\t`` short forms, other C0 controls as lowercase ``\\u00xx``,
everything else (DEL, non-ASCII, U+2028/2029, ``/``) raw. That is what the NIP-01 id serialization and
every relay frame need. Lone surrogates are the one difference (JavaScript escapes them, Python would
emit them raw and then fail to encode UTF-8), so inputs that reach these helpers never contain them:
events and subscription ids are validated, free text goes through :func:`clean_text`.
"""

from __future__ import annotations

import json
import re
from typing import Any

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_EXCERPT_CHARS = 32

dumps_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def dumps(value: Any) -> str:
    """Compact JSON text (raw UTF-8 characters, no whitespace, no NaN/Infinity)."""
    return dumps_compact(value)


def has_lone_surrogate(text: str) -> bool:
    """True if ``text`` holds a UTF-16 surrogate code point, which UTF-8 cannot encode."""
    return _LONE_SURROGATE.search(text) is not None


def clean_text(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD, so that it always encodes as UTF-8."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def quote_excerpt(text: str) -> str:
    """A short, ASCII-only JSON-quoted excerpt of untrusted text, safe to put in a NOTICE."""
    excerpt = text[:_EXCERPT_CHARS]
    quoted = json.dumps(excerpt, ensure_ascii=True)
    return quoted + "…" if len(text) > _EXCERPT_CHARS else quoted
