"""JSON request bodies with bounds: one parser for every DRF endpoint (gateway and escrow role) and the
HTTP proxy routes.

The standard library decoder recurses once per nesting level, so a body of a few kilobytes of ``[`` raises
``RecursionError`` (not ``ValueError``) and reached clients as an HTML 500; a body nested a little less
deep decoded fine and then overflowed the stack in the code that walks it (canonical JSON for HMACs,
serializers, JSONB). Here a body is refused with ``invalid-json`` when it

- does not decode, or nests too deep for the decoder;
- nests deeper than ``MAX_DEPTH`` containers (checked without recursion);
- holds a non-finite number (``NaN``, ``Infinity``, or a literal such as ``1e400`` that overflows);
- holds a NUL character in a string or key (PostgreSQL text and JSONB cannot store it, and no field of
  these APIs has a use for one).

Integers with more digits than Python converts (4300) are refused by the decoder itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_DEPTH = 64


class JSONRejected(ValueError):
    """The body is not JSON this service accepts; the message says why (safe to show the client)."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONRejected(f"number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise JSONRejected(f"{name} is not a JSON number")


def check_shape(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Refuse containers nested deeper than ``max_depth`` and strings or keys holding NUL (iterative)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise JSONRejected("strings must not contain NUL characters")
            continue
        if isinstance(item, Mapping):
            children: Any = [*item.keys(), *item.values()]
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            raise JSONRejected(f"JSON nests deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children)


def parse_json(raw: bytes | str) -> Any:
    """Decode a request body under the bounds above; ``JSONRejected`` says why it was refused."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except JSONRejected:
        raise
    except RecursionError:
        raise JSONRejected(f"JSON nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise JSONRejected(f"not valid JSON ({str(exc)[:120]})") from None
    check_shape(value)
    return value


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser with the bounds of ``parse_json``; a refusal is a ``ParseError`` (400
    ``invalid-json`` through ``hypertuna.exceptions``)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        raw = stream.read() if stream is not None else b""
        try:
            return parse_json(raw)
        except JSONRejected as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
