"""The EventBridge-style pattern matcher: each operator, matches and non-matches, and validation errors."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.events.patterns import PatternError, compile_pattern

EVENT = {
    "source": "shop",
    "type": "order.created",
    "payload": {
        "amount": 42.5,
        "count": 3,
        "currency": "EUR",
        "email": "Ann@Example.com",
        "tags": ["vip", "eu"],
        "paid": True,
        "note": None,
        "customer": {"id": "c_1", "tier": "gold", "address": {"country": "FR"}},
        "empty": [],
    },
}


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ({"type": ["order.created"]}, True),
        ({"type": ["order.updated"]}, False),
        ({"type": ["order.updated", "order.created"]}, True),  # arrays are OR
        ({"type": "order.created"}, True),  # a bare value is shorthand for [value]
        ({"source": ["shop"], "type": ["order.created"]}, True),  # keys are AND
        ({"source": ["shop"], "type": ["order.updated"]}, False),
        ({"type": [{"prefix": "order."}]}, True),
        ({"type": [{"prefix": "user."}]}, False),
        ({"type": [{"suffix": ".created"}]}, True),
        ({"type": [{"suffix": ".deleted"}]}, False),
        ({"payload": {"email": [{"equals-ignore-case": "ann@example.COM"}]}}, True),
        ({"payload": {"email": [{"equals-ignore-case": "bob@example.com"}]}}, False),
        ({"type": [{"anything-but": "order.deleted"}]}, True),
        ({"type": [{"anything-but": ["order.created", "x"]}]}, False),
        ({"type": [{"anything-but": {"prefix": "user."}}]}, True),
        ({"type": [{"anything-but": {"prefix": "order."}}]}, False),
        ({"type": [{"anything-but": {"suffix": ".created"}}]}, False),
        ({"payload": {"missing": [{"anything-but": "x"}]}}, False),  # anything-but needs the field
        ({"payload": {"amount": [{"numeric": [">", 40]}]}}, True),
        ({"payload": {"amount": [{"numeric": [">", 40, "<=", 42.5]}]}}, True),
        ({"payload": {"amount": [{"numeric": [">", 40, "<", 42.5]}]}}, False),
        ({"payload": {"count": [{"numeric": ["=", 3]}]}}, True),
        ({"payload": {"count": [{"numeric": [">=", 4]}]}}, False),
        ({"payload": {"currency": [{"numeric": [">", 0]}]}}, False),  # not a number
        ({"payload": {"paid": [{"numeric": [">", 0]}]}}, False),  # booleans are not numbers
        ({"payload": {"count": [3]}}, True),
        ({"payload": {"count": [3.0]}}, True),
        ({"payload": {"count": ["3"]}}, False),  # no type coercion
        ({"payload": {"paid": [True]}}, True),
        ({"payload": {"paid": [1]}}, False),
        ({"payload": {"note": [None]}}, True),
        ({"payload": {"missing": [None]}}, False),
        ({"payload": {"note": [{"exists": True}]}}, True),
        ({"payload": {"missing": [{"exists": True}]}}, False),
        ({"payload": {"missing": [{"exists": False}]}}, True),
        ({"payload": {"currency": [{"exists": False}]}}, False),
        ({"payload": {"empty": [{"exists": False}]}}, True),
        ({"payload": {"tags": ["eu"]}}, True),  # an array field matches if any element does
        ({"payload": {"tags": ["us"]}}, False),
        ({"payload": {"tags": [{"prefix": "v"}]}}, True),
        ({"payload": {"customer": {"tier": ["gold"]}}}, True),  # nested objects
        ({"payload": {"customer": {"tier": ["silver"]}}}, False),
        ({"payload": {"customer": {"address": {"country": ["FR", "DE"]}}}}, True),
        ({"payload": {"customer": {"address": {"country": [{"anything-but": "FR"}]}}}}, False),
        ({"payload": {"nothing": {"deeper": [{"exists": False}]}}}, True),
        ({"payload": {"nothing": {"deeper": ["x"]}}}, False),
        ({"payload": {"currency": {"deeper": ["x"]}}}, False),  # a scalar is not an object
        ({"type": [{"prefix": "order."}], "payload": {"amount": [{"numeric": [">", 100]}]}}, False),
        ({"type": [{"prefix": "order."}, "user.created"], "payload": {"tags": ["vip"]}}, True),
    ],
)
def test_matching(pattern: dict[str, Any], expected: bool) -> None:
    assert compile_pattern(pattern).matches(EVENT) is expected


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ([], "non-empty JSON object"),
        ({}, "non-empty JSON object"),
        ({"detail": ["x"]}, "unknown field(s) ['detail']"),
        ({"type": []}, "type: an empty list matches nothing"),
        ({"payload": {}}, "payload: an empty object"),
        ({"type": [{"prefix": 1}]}, "type[0].prefix: expects a string"),
        ({"type": [{"startswith": "x"}]}, "type[0]: unknown operator 'startswith'"),
        (
            {"type": [{"prefix": "a", "suffix": "b"}]},
            "type[0]: expected a value or an object with one operator",
        ),
        ({"type": [["nested"]]}, "type[0]: expected a value"),
        ({"payload": {"n": [{"numeric": [">"]}]}}, "payload.n[0].numeric: expects one or two"),
        ({"payload": {"n": [{"numeric": ["~", 1]}]}}, "payload.n[0].numeric[0]: unknown comparison '~'"),
        ({"payload": {"n": [{"numeric": [">", "1"]}]}}, "payload.n[0].numeric[1]: expects a number"),
        ({"payload": {"n": [{"exists": "yes"}]}}, "payload.n[0].exists: expects true or false"),
        ({"type": [{"anything-but": []}]}, "type[0].anything-but: expects at least one value"),
        ({"type": [{"anything-but": {"numeric": [">", 1]}}]}, "type[0].anything-but: expects values"),
        ({"type": [{"anything-but": [{"a": 1}]}]}, "type[0].anything-but[0]: expects strings"),
        ({"type": list(range(201))}, "at most 200 matchers"),
    ],
)
def test_invalid_patterns_say_what_is_wrong(pattern: Any, message: str) -> None:
    with pytest.raises(PatternError) as info:
        compile_pattern(pattern)
    assert message in str(info.value)


def test_too_deep() -> None:
    pattern: dict[str, Any] = {"x": ["y"]}
    for _ in range(12):
        pattern = {"n": pattern}
    with pytest.raises(PatternError, match="nested deeper"):
        compile_pattern({"payload": pattern})
