"""Template data (a mailing's or an invitation's `default_data`, a recipient's `data`) as the JSON SES
takes: the one walk over its values, for the Sampler (checks an invitation before drawing) and the
Mailer (converts a mailing's data, and checks an entry before a send).

`as_json` returns the value as JSON can carry it or raises `NotJson` with where (the path of keys
and list indexes) and why (`DEPTH`, `KEY`, `NUMBER`, `TYPE`), so each caller words the error for
its own field names and error type. Pure: no Dagster, no Mongo.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Path = tuple[str | int, ...]
# A value type JSON has no place for, and what to send instead (e.g. a datetime as ISO 8601).
Conversion = tuple[type | tuple[type, ...], Callable[[Any], Any]]

DEPTH = "depth"  # nested deeper than allowed
KEY = "key"  # an object key that is not text (or is empty, where empty keys are refused)
NUMBER = "number"  # NaN or an infinity
TYPE = "type"  # a value of a type JSON cannot carry


class NotJson(ValueError):
    """`value` at `path` cannot be template data, for `reason` (one of DEPTH, KEY, NUMBER, TYPE);
    for KEY, `path` is the object's and `value` the key."""

    def __init__(self, path: Path, reason: str, value: Any) -> None:
        super().__init__(f"{'.'.join(map(str, path)) or '(top)'}: {reason}")
        self.path = path
        self.reason = reason
        self.value = value


def as_json(
    value: Any,
    *,
    conversions: Sequence[Conversion] = (),
    max_depth: int | None = None,
    empty_keys: bool = True,
    path: Path = (),
) -> Any:
    """`value` as JSON can carry it: text, finite numbers, true/false, null, lists (from lists and
    tuples) and objects with text keys; a value of a type in `conversions` becomes what its
    function returns (tried in order, so a subclass goes before its base). Else `NotJson`."""
    if max_depth is not None and len(path) > max_depth:
        raise NotJson(path, DEPTH, value)
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJson(path, NUMBER, value)
        return value
    for types, convert in conversions:
        if isinstance(value, types):
            return convert(value)

    def below(item: Any, step: str | int) -> Any:
        return as_json(item, conversions=conversions, max_depth=max_depth, empty_keys=empty_keys, path=(*path, step))

    if isinstance(value, Mapping):
        converted = {}
        for key, item in value.items():
            if not isinstance(key, str) or not (key or empty_keys):
                raise NotJson(path, KEY, key)
            converted[key] = below(item, key)
        return converted
    if isinstance(value, list | tuple):
        return [below(item, index) for index, item in enumerate(value)]
    raise NotJson(path, TYPE, value)
