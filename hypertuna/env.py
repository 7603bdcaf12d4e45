"""Typed access to environment variables.

Every setting the gateway reads from the environment goes through this module so that a bad value fails
at start-up with a message naming the variable, what was expected and what was found, instead of
surfacing later as an obscure error. Nothing here imports Django.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Mapping
from urllib.parse import urlsplit

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class EnvError(ValueError):
    """Raised for a malformed environment variable; the message is meant for the operator."""


class Env:
    """Reads variables from a mapping (``os.environ`` by default) with type checks and defaults.

    Empty strings count as unset, so ``FOO=`` in a compose file falls back to the default rather than
    producing an empty secret or a zero.
    """

    def __init__(self, source: Mapping[str, str] | None = None) -> None:
        self._source = os.environ if source is None else source

    def _raw(self, name: builtins.str) -> builtins.str | None:
        value = self._source.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def is_set(self, name: builtins.str) -> builtins.bool:
        return self._raw(name) is not None

    def str(
        self, name: builtins.str, default: builtins.str | None = None, *, choices: tuple[builtins.str, ...] = ()
    ) -> builtins.str:
        value = self._raw(name)
        if value is None:
            if default is None:
                raise EnvError(f"{name} is required but not set")
            value = default
        if choices and value not in choices:
            raise EnvError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        return value

    def optional_str(self, name: builtins.str) -> builtins.str | None:
        return self._raw(name)

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        value = self._raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise EnvError(f"{name} must be a boolean (true/false/1/0/yes/no/on/off); got {value!r}")

    def int(
        self,
        name: builtins.str,
        default: builtins.int,
        *,
        min_value: builtins.int | None = None,
        max_value: builtins.int | None = None,
    ) -> builtins.int:
        value = self._raw(name)
        if value is None:
            result = default
        else:
            try:
                result = builtins.int(value)
            except ValueError:
                raise EnvError(f"{name} must be an integer; got {value!r}") from None
        if min_value is not None and result < min_value:
            raise EnvError(f"{name} must be at least {min_value}; got {result}")
        if max_value is not None and result > max_value:
            raise EnvError(f"{name} must be at most {max_value}; got {result}")
        return result

    def list(self, name: builtins.str, default: tuple[builtins.str, ...] = ()) -> builtins.list[builtins.str]:
        """Comma-separated list; blanks are dropped."""
        value = self._raw(name)
        if value is None:
            return builtins.list(default)
        return [item.strip() for item in value.split(",") if item.strip()]

    def url(
        self, name: builtins.str, default: builtins.str | None = None, *, schemes: tuple[builtins.str, ...]
    ) -> builtins.str | None:
        value = self._raw(name)
        if value is None:
            return default
        scheme = urlsplit(value).scheme
        if scheme not in schemes:
            raise EnvError(f"{name} must be a URL with scheme {' or '.join(schemes)}; got scheme {scheme!r}")
        return value


env = Env()
