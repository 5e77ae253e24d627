"""Typed reading of untrusted mappings.

Everything the agent parses comes from users (manifest files, the Kubernetes
API).  `Fields` wraps one JSON-like mapping together with its path inside the
object, so that every error names the exact field that is wrong
(`spec.listeners[2].port: must be at most 65535`).  This module knows nothing of
the Gateway API; it only enforces the shapes that an OpenAPI schema would.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, TypeVar

# The same patterns the Gateway API CRDs and Kubernetes use, compiled once.
DNS1123_SUBDOMAIN: Final = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
DNS1123_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
GROUP_NAME: Final = re.compile(
    r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
KIND_NAME: Final = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
HOSTNAME: Final = re.compile(
    r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
HTTP_HEADER_NAME: Final = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
# GEP-2257 durations as the HTTPRoute timeouts use them.
GEP2257_DURATION: Final = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")

_REQUIRED: Final = object()


class FieldError(ValueError):
    """A value at `path` does not have the shape the schema demands."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class FieldErrors(FieldError):
    """Several fields of one object are wrong: each is said (up to a bound),
    not only the first, so one edit can fix them all."""

    SHOWN: Final = 8

    def __init__(self, errors: Sequence[FieldError]) -> None:
        flat: list[FieldError] = []
        for e in errors:
            flat.extend(e.errors if isinstance(e, FieldErrors) else [e])
        text = "; ".join(str(e) for e in flat[: self.SHOWN])
        if len(flat) > self.SHOWN:
            text += f"; and {len(flat) - self.SHOWN} more"
        ValueError.__init__(self, text)
        self.path = flat[0].path
        self.message = text
        self.errors: tuple[FieldError, ...] = tuple(flat)


T = TypeVar("T")


def each(items: Iterable[Fields], parse: Callable[[Fields], T]) -> list[T]:
    """`parse` applied to every item; the errors of all items are raised together."""
    out: list[T] = []
    errors: list[FieldError] = []
    for item in items:
        try:
            out.append(parse(item))
        except FieldError as exc:
            errors.append(exc)
    if errors:
        raise errors[0] if len(errors) == 1 else FieldErrors(errors)
    return out


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _number(value: int) -> str:
    """An int as text, short: YAML reads a 5000-digit literal, and str() of it
    raises ValueError (CPython's limit of 4300 digits)."""
    if value.bit_length() > 64:
        return f"a number of about {int(value.bit_length() * 0.30103) + 1} digits"
    return str(value)


def type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, Sequence):
        return "array"
    return type(value).__name__


def _short(value: str, limit: int = 64) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


class Fields:
    """A read-only view of one untrusted mapping that knows its own path."""

    __slots__ = ("_data", "path")

    def __init__(self, data: object, path: str) -> None:
        # type() first: isinstance against an ABC is slow and this runs per field.
        if type(data) is not dict and not isinstance(data, Mapping):
            raise FieldError(path or "<root>", f"must be an object, got {type_name(data)}")
        self._data: Mapping[object, object] = data
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str) -> object:
        return self._data.get(key)

    def has(self, key: str) -> bool:
        return self._data.get(key) is not None

    def error(self, key: str, message: str) -> FieldError:
        return FieldError(self.at(key), message)

    # -- scalars -----------------------------------------------------------

    def string(
        self,
        key: str,
        default: object = _REQUIRED,
        *,
        max_len: int | None = None,
        min_len: int = 0,
        pattern: re.Pattern[str] | None = None,
        enum: Sequence[str] | None = None,
    ) -> str:
        value = self._data.get(key)
        if value is None:
            if default is _REQUIRED:
                raise self.error(key, "required value is missing")
            assert isinstance(default, str)
            return default
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {type_name(value)}")
        return check_string(
            value, self.at(key), max_len=max_len, min_len=min_len, pattern=pattern, enum=enum
        )

    def opt_string(
        self,
        key: str,
        *,
        max_len: int | None = None,
        min_len: int = 0,
        pattern: re.Pattern[str] | None = None,
        enum: Sequence[str] | None = None,
    ) -> str | None:
        if self._data.get(key) is None:
            return None
        return self.string(key, max_len=max_len, min_len=min_len, pattern=pattern, enum=enum)

    def integer(
        self,
        key: str,
        default: object = _REQUIRED,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        value = self._data.get(key)
        if value is None:
            if default is _REQUIRED:
                raise self.error(key, "required value is missing")
            assert isinstance(default, int)
            return default
        # JSON has no integer type of its own; 80.0 is an integer, True is not.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be an integer, got {type_name(value)}")
        if isinstance(value, float):
            if not value.is_integer():
                raise self.error(key, f"must be an integer, got {value!r}")
            value = int(value)
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {_number(value)}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum}, got {_number(value)}")
        return value

    def opt_integer(
        self, key: str, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        if self._data.get(key) is None:
            return None
        return self.integer(key, minimum=minimum, maximum=maximum)

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self._data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"must be a boolean, got {type_name(value)}")
        return value

    def int_or_string(self, key: str) -> int | str | None:
        value = self._data.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            return check_string(value, self.at(key), max_len=63, min_len=1)
        return self.integer(key, minimum=1, maximum=65535)

    # -- structures --------------------------------------------------------

    def obj(self, key: str) -> Fields:
        value = self._data.get(key)
        if value is None:
            raise self.error(key, "required value is missing")
        return Fields(value, self.at(key))

    def opt_obj(self, key: str) -> Fields | None:
        value = self._data.get(key)
        if value is None:
            return None
        return Fields(value, self.at(key))

    def _list(self, key: str, min_items: int, max_items: int | None) -> list[object]:
        value = self._data.get(key)
        if value is None:
            if min_items > 0:
                raise self.error(key, "required value is missing")
            return []
        if type(value) is not list and (
            isinstance(value, str | bytes) or not isinstance(value, Sequence)
        ):
            raise self.error(key, f"must be an array, got {type_name(value)}")
        if len(value) < min_items:
            raise self.error(key, f"must have at least {min_items} item(s), got {len(value)}")
        if max_items is not None and len(value) > max_items:
            raise self.error(key, f"must have at most {max_items} items, got {len(value)}")
        return list(value)

    def items(self, key: str, *, min_items: int = 0, max_items: int | None = None) -> list[Fields]:
        values = self._list(key, min_items, max_items)
        at = self.at(key)
        return [Fields(v, f"{at}[{i}]") for i, v in enumerate(values)]

    def strings(
        self,
        key: str,
        *,
        min_items: int = 0,
        max_items: int | None = None,
        max_len: int | None = None,
        pattern: re.Pattern[str] | None = None,
        enum: Sequence[str] | None = None,
    ) -> tuple[str, ...]:
        values = self._list(key, min_items, max_items)
        at = self.at(key)
        out: list[str] = []
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise FieldError(f"{at}[{i}]", f"must be a string, got {type_name(v)}")
            out.append(check_string(v, f"{at}[{i}]", max_len=max_len, pattern=pattern, enum=enum))
        return tuple(out)

    def integers(
        self, key: str, *, minimum: int, maximum: int, max_items: int | None = None
    ) -> tuple[int, ...]:
        values = self._list(key, 0, max_items)
        at = self.at(key)
        out: list[int] = []
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, int):
                raise FieldError(f"{at}[{i}]", f"must be an integer, got {type_name(v)}")
            if not minimum <= v <= maximum:
                raise FieldError(f"{at}[{i}]", f"must be {minimum}-{maximum}, got {_number(v)}")
            out.append(v)
        return tuple(out)

    def string_map(self, key: str) -> tuple[tuple[str, str], ...]:
        """A map of string to string (labels, annotations), sorted by key."""
        value = self._data.get(key)
        if value is None:
            return ()
        if not isinstance(value, Mapping):
            raise self.error(key, f"must be an object, got {type_name(value)}")
        out: list[tuple[str, str]] = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise self.error(key, f"keys must be strings, got {type_name(k)}")
            if v is None:
                v = ""
            if not isinstance(v, str):
                raise FieldError(f"{self.at(key)}.{k}", f"must be a string, got {type_name(v)}")
            out.append((k, v))
        out.sort()
        return tuple(out)


def check_string(
    value: str,
    path: str,
    *,
    max_len: int | None = None,
    min_len: int = 0,
    pattern: re.Pattern[str] | None = None,
    enum: Sequence[str] | None = None,
) -> str:
    if max_len is not None and len(value) > max_len:
        raise FieldError(path, f"must be at most {max_len} characters, got {len(value)}")
    if not value.isascii() and not _encodable(value):
        # A lone surrogate (JSON's "\ud800") is no text at all: nothing past
        # the parser could write it (UTF-8 config files, status JSON).
        raise FieldError(path, "is not valid Unicode (a lone surrogate)")
    if len(value) < min_len:
        raise FieldError(path, "must not be empty" if min_len == 1 else f"too short: {len(value)}")
    if enum is not None and value not in enum:
        allowed = ", ".join(repr(e) for e in enum)
        raise FieldError(path, f"unsupported value {_short(value)}: must be one of {allowed}")
    if pattern is not None and not pattern.fullmatch(value):
        raise FieldError(path, f"invalid value {_short(value)}: must match {pattern.pattern}")
    return value
