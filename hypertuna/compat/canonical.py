"""Canonical JSON byte-identical to the workers' sorted-key ``JSON.stringify``.

Workers sign ``stableStringify(value)``: ``JSON.stringify`` of a copy whose object keys were inserted in
JavaScript's default sort order. Reproducing the bytes exactly matters because an HMAC over a different
serialisation of the same data does not verify. The JavaScript behaviours reproduced here:

- keys sorted by UTF-16 code units (not code points: they differ above U+FFFF);
- "array index" keys ("0" .. "4294967294" in canonical decimal form) are enumerated first, in numeric
  order, whatever the sort said, because that is how JavaScript objects order their own keys;
- numbers use ``Number.prototype.toString``: ``1`` not ``1.0``, ``1e+21``, ``1e-7``, ``-0`` as ``0``,
  integers beyond 2**53 rounded through a double exactly as ``JSON.parse`` would have rounded them;
  NaN and infinities become ``null``;
- strings escape only ``"``, ``\\``, and control characters (``\\b \\f \\n \\r \\t``, others as
  ``\\u00xx``); everything else, non-ASCII included, is emitted raw; lone surrogates become ``\\udxxx``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_MAX_ARRAY_INDEX = 2**32 - 2
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_encode_str = json.JSONEncoder(ensure_ascii=False).encode


def js_number(value: float | int) -> str:
    """Render a number exactly as JavaScript's ``String(number)`` does."""
    if isinstance(value, int):
        try:
            value = float(value)
        except OverflowError:
            return "null"
    if math.isnan(value) or math.isinf(value):
        return "null"
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    # repr() gives the shortest digit string that round-trips, which is the digit string ECMAScript's
    # Number::toString specifies; only the layout (where the point and the exponent go) differs.
    text = repr(abs(value))
    mantissa, _, exp_text = text.partition("e")
    exponent = int(exp_text) if exp_text else 0
    int_part, _, frac_part = mantissa.partition(".")
    digits = int_part + frac_part
    point = len(int_part) + exponent  # ECMAScript's n: value = 0.digits * 10**point
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0") or "0"
    k = len(digits)
    if k <= point <= 21:
        return sign + digits + "0" * (point - k)
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * (-point) + digits
    exp = point - 1
    exp_str = ("+" if exp >= 0 else "-") + str(abs(exp))
    if k == 1:
        return sign + digits + "e" + exp_str
    return sign + digits[0] + "." + digits[1:] + "e" + exp_str


def _js_string(value: str) -> str:
    encoded: str = _encode_str(value)
    if _LONE_SURROGATE.search(encoded):
        encoded = _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", encoded)
    return encoded


def _is_array_index(key: str) -> bool:
    return key.isdigit() and key.isascii() and (key == "0" or key[0] != "0") and int(key) <= _MAX_ARRAY_INDEX


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _ordered_keys(obj: dict[str, Any]) -> list[str]:
    keys = sorted(obj, key=_utf16_key)
    indices = sorted((k for k in keys if _is_array_index(k)), key=int)
    if not indices:
        return keys
    return indices + [k for k in keys if not _is_array_index(k)]


def _render(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_js_string(value))
    elif isinstance(value, (int, float)):
        out.append(js_number(value))
    elif isinstance(value, dict):
        out.append("{")
        first = True
        for key in _ordered_keys(value):
            if not isinstance(key, str):
                raise TypeError(f"canonical JSON object keys must be strings, not {type(key).__name__}")
            if not first:
                out.append(",")
            first = False
            out.append(_js_string(key))
            out.append(":")
            _render(value[key], out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _render(item, out)
        out.append("]")
    else:
        raise TypeError(f"value of type {type(value).__name__} is not JSON serializable")


def canonical_json(value: Any) -> str:
    """Serialise ``value`` (as produced by ``json.loads``) to the workers' canonical form."""
    out: list[str] = []
    _render(value, out)
    return "".join(out)
