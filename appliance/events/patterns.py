"""EventBridge-style event patterns over ``{source, type, payload}``.

A pattern is a JSON object mirroring the event. Each leaf is a list of matchers, any of which may match
(arrays are OR); nested objects match nested fields, and every key in the pattern must match (AND).
Matchers: exact values (string, number, boolean, null), ``{"prefix": s}``, ``{"suffix": s}``,
``{"equals-ignore-case": s}``, ``{"anything-but": value | [values] | {"prefix": s} | {"suffix": s}}``,
``{"numeric": [">", 0, "<=", 5]}`` and ``{"exists": true|false}``. When the event's field is an array,
the leaf matches if any element does. A bare value is accepted as shorthand for ``[value]``.

:func:`compile_pattern` validates (raising :class:`PatternError` that says where and what is wrong) and
returns a :class:`Pattern` whose :meth:`Pattern.matches` runs against an event document.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FIELDS", "Pattern", "PatternError", "compile_pattern"]

FIELDS = ("source", "type", "payload")
MAX_DEPTH = 10
MAX_MATCHERS = 200

_MISSING = object()
_NUMERIC_OPS: dict[str, Callable[[float, float], bool]] = {
    "=": operator.eq,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

Matcher = Callable[[Any], bool]  # called with the field's value, or _MISSING


class PatternError(ValueError):
    """A pattern is malformed; the message names the path (``payload.amount[0]``) and the problem."""


@dataclass(frozen=True)
class Pattern:
    """A validated pattern: ``fields`` maps a key to a nested pattern or to its leaf's matchers."""

    fields: dict[str, Pattern | tuple[Matcher, ...]]

    def matches(self, document: Any) -> bool:
        """Whether ``document`` (``{"source", "type", "payload"}`` for events) matches."""
        for key, node in self.fields.items():
            value = document.get(key, _MISSING) if isinstance(document, Mapping) else _MISSING
            if isinstance(node, Pattern):
                if not node.matches(value if value is not _MISSING else {}):
                    return False
            elif not _leaf_matches(node, value):
                return False
        return True


def _leaf_matches(matchers: tuple[Matcher, ...], value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not value:
        values = [_MISSING]
    return any(m(v) for m in matchers for v in values)


def compile_pattern(pattern: Any, top_level: bool = True) -> Pattern:
    """Validate ``pattern`` and build it; raises :class:`PatternError`."""
    counter = [0]
    if not isinstance(pattern, dict) or not pattern:
        raise PatternError('pattern: must be a non-empty JSON object, e.g. {"type": ["order.created"]}')
    if top_level:
        unknown = sorted(set(pattern) - set(FIELDS))
        if unknown:
            raise PatternError(f"pattern: unknown field(s) {unknown}; patterns match {', '.join(FIELDS)}")
    return _compile_object(pattern, "pattern", 0, counter)


def _compile_object(pattern: dict[str, Any], path: str, depth: int, counter: list[int]) -> Pattern:
    if depth > MAX_DEPTH:
        raise PatternError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    fields: dict[str, Pattern | tuple[Matcher, ...]] = {}
    for key, node in pattern.items():
        where = f"{path}.{key}" if path != "pattern" else key
        if isinstance(node, dict):
            if not node:
                raise PatternError(f"{where}: an empty object matches nothing; remove it or add fields")
            fields[key] = _compile_object(node, where, depth + 1, counter)
        else:
            fields[key] = _compile_leaf(node if isinstance(node, list) else [node], where, counter)
    return Pattern(fields)


def _compile_leaf(items: list[Any], path: str, counter: list[int]) -> tuple[Matcher, ...]:
    if not items:
        raise PatternError(f"{path}: an empty list matches nothing; list at least one value or matcher")
    counter[0] += len(items)
    if counter[0] > MAX_MATCHERS:
        raise PatternError(f"{path}: a pattern may hold at most {MAX_MATCHERS} matchers")
    return tuple(_compile_matcher(item, f"{path}[{i}]") for i, item in enumerate(items))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equals(expected: Any) -> Matcher:
    if _is_number(expected):
        return lambda v: _is_number(v) and v == expected
    return lambda v: v is not _MISSING and type(v) is type(expected) and v == expected


def _compile_matcher(item: Any, path: str) -> Matcher:
    if item is None or isinstance(item, str | bool) or _is_number(item):
        return _equals(item)
    if not isinstance(item, dict) or len(item) != 1:
        raise PatternError(
            f"{path}: expected a value or an object with one operator"
            " (prefix, suffix, equals-ignore-case, anything-but, numeric, exists)"
        )
    [(op, arg)] = item.items()
    builder = _OPERATORS.get(op)
    if builder is None:
        raise PatternError(f"{path}: unknown operator {op!r}; use one of {sorted(_OPERATORS)}")
    return builder(arg, f"{path}.{op}")


def _string_arg(arg: Any, path: str) -> str:
    if not isinstance(arg, str):
        raise PatternError(f"{path}: expects a string")
    return arg


def _prefix(arg: Any, path: str) -> Matcher:
    text = _string_arg(arg, path)
    return lambda v: isinstance(v, str) and v.startswith(text)


def _suffix(arg: Any, path: str) -> Matcher:
    text = _string_arg(arg, path)
    return lambda v: isinstance(v, str) and v.endswith(text)


def _ignore_case(arg: Any, path: str) -> Matcher:
    text = _string_arg(arg, path).casefold()
    return lambda v: isinstance(v, str) and v.casefold() == text


def _exists(arg: Any, path: str) -> Matcher:
    if not isinstance(arg, bool):
        raise PatternError(f"{path}: expects true or false")
    return (lambda v: v is not _MISSING) if arg else (lambda v: v is _MISSING)


def _anything_but(arg: Any, path: str) -> Matcher:
    if isinstance(arg, dict):
        if len(arg) != 1 or next(iter(arg)) not in ("prefix", "suffix"):
            raise PatternError(f"{path}: expects values, or one of {{prefix: s}} / {{suffix: s}}")
        [(op, text)] = arg.items()
        inner = _prefix(text, f"{path}.{op}") if op == "prefix" else _suffix(text, f"{path}.{op}")
        return lambda v: isinstance(v, str) and not inner(v)
    values = arg if isinstance(arg, list) else [arg]
    if not values:
        raise PatternError(f"{path}: expects at least one value")
    equals = []
    for i, value in enumerate(values):
        if not (value is None or isinstance(value, str | bool) or _is_number(value)):
            raise PatternError(f"{path}[{i}]: expects strings, numbers, booleans or null")
        equals.append(_equals(value))
    return lambda v: v is not _MISSING and not any(eq(v) for eq in equals)


def _numeric(arg: Any, path: str) -> Matcher:
    if not isinstance(arg, list) or not arg or len(arg) % 2 or len(arg) > 4:
        raise PatternError(f'{path}: expects one or two operator/number pairs, e.g. [">", 0, "<=", 5]')
    checks: list[tuple[Callable[[float, float], bool], float]] = []
    for i in range(0, len(arg), 2):
        op, bound = arg[i], arg[i + 1]
        if op not in _NUMERIC_OPS:
            raise PatternError(f"{path}[{i}]: unknown comparison {op!r}; use one of {list(_NUMERIC_OPS)}")
        if not _is_number(bound):
            raise PatternError(f"{path}[{i + 1}]: expects a number after {op!r}")
        checks.append((_NUMERIC_OPS[op], bound))
    return lambda v: _is_number(v) and all(compare(v, bound) for compare, bound in checks)


_OPERATORS: dict[str, Callable[[Any, str], Matcher]] = {
    "prefix": _prefix,
    "suffix": _suffix,
    "equals-ignore-case": _ignore_case,
    "anything-but": _anything_but,
    "numeric": _numeric,
    "exists": _exists,
}
