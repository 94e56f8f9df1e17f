"""The one filter language: an Elasticsearch-style ``bool`` tree, parsed into typed clauses.

A filter is one clause, written as a JSON object with a single key::

    {"bool": {"must": [...], "filter": [...], "should": [...], "must_not": [...],
              "minimum_should_match": 1}}
    {"term": {"genre": "drama"}}
    {"terms": {"genre": ["drama", "comedy"]}}
    {"range": {"year": {"gte": 1990, "lt": 2000}}}
    {"exists": {"field": "year"}}

Meaning, identical on every backend:

* ``must`` and ``filter`` clauses must all match (filters never score, so they are the same thing here);
* ``must_not`` clauses must all fail to match;
* ``should``: at least ``minimum_should_match`` of them must match. It defaults, as in Elasticsearch,
  to 1 when the ``bool`` has no ``must``/``filter`` clause and to 0 otherwise;
* ``term`` matches a document whose field equals the value, or, for a list field, contains it;
* ``terms`` matches when the field equals (or contains) any of the values;
* ``range`` compares numbers (``gt``, ``gte``, ``lt``, ``lte``); non-numeric values never match;
* ``exists`` matches when the field holds a value other than null, ``""`` or ``[]``.

:func:`parse_filter` builds the tree (raising :class:`FilterError` with the path of the bad part);
the adapters compile it: :func:`to_sql` to a parameterised SQL expression, :func:`to_meili` to a
Meilisearch filter string with every value quoted. User text is never pasted into either.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from itertools import combinations
from typing import Any

import msgspec

__all__ = [
    "FIELD_PATTERN",
    "Bool",
    "Clause",
    "Exists",
    "FilterError",
    "Range",
    "Scalar",
    "SqlField",
    "Term",
    "Terms",
    "fields_of",
    "meili_value",
    "parse_filter",
    "to_meili",
    "to_sql",
]

FIELD_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
_FIELD_RE = re.compile(FIELD_PATTERN)
MAX_DEPTH = 8
MAX_CLAUSES = 256
MAX_TERMS = 1024

Scalar = str | int | float | bool


class FilterError(ValueError):
    """The filter is malformed; the message names where (``filter.bool.must[1].term``) and why."""


class Term(msgspec.Struct, frozen=True):
    field: str
    value: Scalar


class Terms(msgspec.Struct, frozen=True):
    field: str
    values: tuple[Scalar, ...]


class Range(msgspec.Struct, frozen=True):
    field: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


class Exists(msgspec.Struct, frozen=True):
    field: str


class Bool(msgspec.Struct, frozen=True):
    must: tuple[Clause, ...] = ()
    filter: tuple[Clause, ...] = ()
    should: tuple[Clause, ...] = ()
    must_not: tuple[Clause, ...] = ()
    minimum_should_match: int | None = None

    @property
    def required_should(self) -> int:
        """How many ``should`` clauses must match (Elasticsearch's default when unset)."""
        if self.minimum_should_match is not None:
            return self.minimum_should_match
        return 0 if (self.must or self.filter) else min(1, len(self.should))

    @property
    def is_empty(self) -> bool:
        return not (self.must or self.filter or self.should or self.must_not)


Clause = Bool | Term | Terms | Range | Exists


class _RangeBounds(msgspec.Struct, forbid_unknown_fields=True):
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


class _BoolBody(msgspec.Struct, forbid_unknown_fields=True):
    must: list[Any] = []
    filter: list[Any] = []
    should: list[Any] = []
    must_not: list[Any] = []
    minimum_should_match: int | None = None


class _ExistsBody(msgspec.Struct, forbid_unknown_fields=True):
    field: str


class _Budget:
    def __init__(self) -> None:
        self.clauses = 0

    def spend(self, path: str) -> None:
        self.clauses += 1
        if self.clauses > MAX_CLAUSES:
            raise FilterError(f"{path}: the filter has more than {MAX_CLAUSES} clauses")


def parse_filter(raw: Any, path: str = "filter") -> Clause:
    """Parse the JSON form of a filter into typed clauses.

    Raises:
        FilterError: unknown clause, wrong shape, bad field name, too deep or too large.
    """
    return _parse(raw, path, 0, _Budget())


def _parse(raw: Any, path: str, depth: int, budget: _Budget) -> Clause:
    budget.spend(path)
    if depth > MAX_DEPTH:
        raise FilterError(f"{path}: bool clauses nest deeper than {MAX_DEPTH} levels")
    if not isinstance(raw, dict) or len(raw) != 1:
        raise FilterError(
            f"{path}: a clause is an object with exactly one of bool, term, terms, range, exists"
        )
    ((kind, body),) = raw.items()
    parser = _PARSERS.get(kind)
    if parser is None:
        raise FilterError(f"{path}: unknown clause {kind!r}; use bool, term, terms, range or exists")
    return parser(body, f"{path}.{kind}", depth, budget)


def _field(name: Any, path: str) -> str:
    if not isinstance(name, str) or not _FIELD_RE.match(name):
        raise FilterError(f"{path}: {name!r} is not a field name (letters, digits, _; 1-64 characters)")
    return name


def _single(body: Any, path: str) -> tuple[str, Any]:
    if not isinstance(body, dict) or len(body) != 1:
        raise FilterError(f'{path}: expected an object with exactly one field, like {{"year": ...}}')
    ((name, value),) = body.items()
    return _field(name, path), value


def _scalar(value: Any, path: str) -> Scalar:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise FilterError(f"{path}: integers are limited to 64 bits")
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise FilterError(f"{path}: a value must be a string, a finite number or a boolean")


def _parse_term(body: Any, path: str, depth: int, budget: _Budget) -> Clause:
    name, value = _single(body, path)
    if isinstance(value, dict) and set(value) == {"value"}:  # Elasticsearch's long form
        value = value["value"]
    return Term(name, _scalar(value, f"{path}.{name}"))


def _parse_terms(body: Any, path: str, depth: int, budget: _Budget) -> Clause:
    name, values = _single(body, path)
    if not isinstance(values, list) or not 1 <= len(values) <= MAX_TERMS:
        raise FilterError(f"{path}.{name}: expected a list of 1 to {MAX_TERMS} values")
    return Terms(name, tuple(_scalar(v, f"{path}.{name}[{i}]") for i, v in enumerate(values)))


def _parse_range(body: Any, path: str, depth: int, budget: _Budget) -> Clause:
    name, bounds = _single(body, path)
    try:
        parsed = msgspec.convert(bounds, _RangeBounds)
    except msgspec.ValidationError as exc:
        raise FilterError(f"{path}.{name}: {exc} (bounds are numbers: gt, gte, lt, lte)") from None
    values = [parsed.gt, parsed.gte, parsed.lt, parsed.lte]
    if all(v is None for v in values):
        raise FilterError(f"{path}.{name}: give at least one of gt, gte, lt, lte")
    if any(v is not None and not math.isfinite(v) for v in values):
        raise FilterError(f"{path}.{name}: bounds must be finite numbers")
    return Range(name, parsed.gt, parsed.gte, parsed.lt, parsed.lte)


def _parse_exists(body: Any, path: str, depth: int, budget: _Budget) -> Clause:
    try:
        parsed = msgspec.convert(body, _ExistsBody)
    except msgspec.ValidationError as exc:
        raise FilterError(f'{path}: {exc} (write {{"exists": {{"field": "name"}}}})') from None
    return Exists(_field(parsed.field, f"{path}.field"))


def _parse_bool(body: Any, path: str, depth: int, budget: _Budget) -> Clause:
    try:
        parsed = msgspec.convert(body, _BoolBody)
    except msgspec.ValidationError as exc:
        raise FilterError(f"{path}: {exc}") from None
    required = parsed.minimum_should_match
    if required is not None and not 0 <= required <= len(parsed.should):
        raise FilterError(f"{path}.minimum_should_match: must be between 0 and the number of should clauses")
    if required is not None and math.comb(len(parsed.should), required) > MAX_CLAUSES:
        raise FilterError(f"{path}.minimum_should_match: too many combinations of should clauses")
    if depth > 0 and not (parsed.must or parsed.filter or parsed.should or parsed.must_not):
        raise FilterError(f"{path}: an empty bool (match everything) is only allowed at the top level")

    def many(items: list[Any], key: str) -> tuple[Clause, ...]:
        return tuple(_parse(item, f"{path}.{key}[{i}]", depth + 1, budget) for i, item in enumerate(items))

    return Bool(
        must=many(parsed.must, "must"),
        filter=many(parsed.filter, "filter"),
        should=many(parsed.should, "should"),
        must_not=many(parsed.must_not, "must_not"),
        minimum_should_match=parsed.minimum_should_match,
    )


_PARSERS: dict[str, Callable[[Any, str, int, _Budget], Clause]] = {
    "bool": _parse_bool,
    "term": _parse_term,
    "terms": _parse_terms,
    "range": _parse_range,
    "exists": _parse_exists,
}


def fields_of(clause: Clause) -> Iterator[str]:
    """Every field the filter names, so the service can check each one is filterable."""
    if isinstance(clause, Bool):
        for child in (*clause.must, *clause.filter, *clause.should, *clause.must_not):
            yield from fields_of(child)
    else:
        yield clause.field


# --- SQL -------------------------------------------------------------------------------------------

# A leaf is tested on the document's typed column for the field when it holds a scalar, and on the
# attributes table (one row per value) when the field holds a list (the column is then NULL). Either
# way a leaf evaluates to exactly 0 or 1, never NULL, so NOT and the should-sums stay two-valued.
AttrMatch = Callable[[Callable[[str], str], str, list[Any]], str]


def sql_value(value: Scalar) -> Any:
    """How a value is stored in (and compared against) SQLite: booleans as text, as Meilisearch
    shows them in facets; integers past 64 bits (which SQLite cannot hold) as floats."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return float(value)
    return value


class SqlField(msgspec.Struct, frozen=True):
    """Where a filterable field lives: its typed ``column`` of the documents table (scalar values)
    and its ``number`` in the attributes table (the values of lists)."""

    column: str
    number: int


def to_sql(
    clause: Clause,
    doc: str,
    fields: dict[str, SqlField],
    attrs_table: str,
    params: list[Any],
    correlated: bool = False,
) -> str:
    """Compile ``clause`` to a SQL boolean expression over the document row ``doc``; values go into
    ``params``.

    ``correlated`` picks how a list-valued field is tested: an ``EXISTS`` probe of the (doc, field,
    value) index per candidate row (best when full-text matching already narrowed the candidates), or
    an ``IN`` over the rowids matching the leaf, computed once (best when the filter drives the query).
    """

    def attr(condition: Callable[[str], str], field: str, values: list[Any]) -> str:
        where = fields[field]
        column = f"{doc}.{where.column}"
        params.extend(values)  # the list branch comes first in the text, then the scalar one
        params.extend(values)
        if correlated:
            lists = (
                f"EXISTS (SELECT 1 FROM {attrs_table} WHERE doc = {doc}.rowid AND field = {where.number:d}"
                f" AND {condition('value')})"
            )
        else:
            lists = f"{doc}.rowid IN (SELECT doc FROM {attrs_table} WHERE field = {where.number:d} AND {condition('value')})"
        return f"(CASE WHEN {column} IS NULL THEN {lists} ELSE {condition(column)} END)"

    return _sql(clause, attr)


def _sql(clause: Clause, attr: AttrMatch) -> str:
    if isinstance(clause, Term):
        return attr(lambda x: f"{x} = ?", clause.field, [sql_value(clause.value)])
    if isinstance(clause, Terms):
        marks = ", ".join("?" for _ in clause.values)
        return attr(lambda x: f"{x} IN ({marks})", clause.field, [sql_value(v) for v in clause.values])
    if isinstance(clause, Range):
        ops, values = [], []
        for op, bound in ((">", clause.gt), (">=", clause.gte), ("<", clause.lt), ("<=", clause.lte)):
            if bound is not None:
                ops.append(op)
                values.append(bound)

        def in_range(x: str) -> str:
            return " AND ".join([f"typeof({x}) IN ('integer', 'real')", *(f"{x} {op} ?" for op in ops)])

        return attr(in_range, clause.field, values)
    if isinstance(clause, Exists):
        return attr(lambda x: f"{x} != ''", clause.field, [])
    return _sql_bool(clause, attr)


def _sql_bool(clause: Bool, attr: AttrMatch) -> str:
    parts = [_sql(c, attr) for c in (*clause.must, *clause.filter)]
    parts += [f"NOT ({_sql(c, attr)})" for c in clause.must_not]
    required = clause.required_should
    if required == 1:
        parts.append("(" + " OR ".join(_sql(c, attr) for c in clause.should) + ")")
    elif required > 1:
        # SQLite booleans are 0/1, so "at least n of these" is a sum.
        parts.append("((" + ") + (".join(_sql(c, attr) for c in clause.should) + f")) >= {int(required)}")
    return "(" + " AND ".join(parts) + ")" if parts else "1"


# --- Meilisearch ------------------------------------------------------------------------------------


def meili_value(value: Scalar) -> str:
    """A value as a Meilisearch filter literal: strings double-quoted with ``\\`` and ``"`` escaped."""
    if isinstance(value, bool):
        return '"true"' if value else '"false"'
    if isinstance(value, int | float):
        return repr(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_meili(clause: Clause) -> str:
    """Compile ``clause`` to a Meilisearch filter expression (field names are already validated)."""
    if isinstance(clause, Term):
        return f"{clause.field} = {meili_value(clause.value)}"
    if isinstance(clause, Terms):
        return f"{clause.field} IN [{', '.join(meili_value(v) for v in clause.values)}]"
    if isinstance(clause, Range):
        bounds = [
            f"{clause.field} {op} {bound!r}"
            for op, bound in ((">", clause.gt), (">=", clause.gte), ("<", clause.lt), ("<=", clause.lte))
            if bound is not None
        ]
        return "(" + " AND ".join(bounds) + ")"
    if isinstance(clause, Exists):
        return f"({clause.field} EXISTS AND NOT {clause.field} IS NULL AND NOT {clause.field} IS EMPTY)"
    return _meili_bool(clause)


def _meili_bool(clause: Bool) -> str:
    parts = [to_meili(c) for c in (*clause.must, *clause.filter)]
    parts += [f"NOT ({to_meili(c)})" for c in clause.must_not]
    required = clause.required_should
    if required >= 1:
        parts.append("(" + " OR ".join(_at_least(clause.should, required)) + ")")
    # Only a top-level bool can be empty (the parser rejects nested ones); it means "no filter".
    return "(" + " AND ".join(parts) + ")" if parts else ""


def _at_least(clauses: tuple[Clause, ...], required: int) -> list[str]:
    """``required`` of ``clauses`` as an OR of ANDs (Meilisearch has no counting; the parser caps it)."""
    compiled = [to_meili(c) for c in clauses]
    if required == 1:
        return compiled
    return ["(" + " AND ".join(group) + ")" for group in combinations(compiled, required)]
