"""Email templates: Jinja2 in its sandbox, HTML autoescaped, checked when saved, bounded when rendered.

A template has three parts: ``subject`` and ``text`` (rendered without escaping, they are not HTML) and
``html`` (every ``{{ variable }}`` is HTML-escaped unless the author marks it ``|safe``). The sandbox
refuses attribute access to internals (``__class__``, ``mro``...) and unsafe calls, so a template
cannot reach Python objects beyond the data it is given; ``range`` is capped by the sandbox and the
rendered output is capped here, so a template cannot make the box build an endless string.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, NamedTuple

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from appliance.core.errors import Unprocessable

__all__ = ["MAX_RENDERED", "MAX_SOURCE", "Rendered", "Renderer"]

MAX_SOURCE = 256 * 1024
MAX_RENDERED = 2 * 1024 * 1024


class Rendered(NamedTuple):
    subject: str
    html: str
    text: str


# Iterations of ``range`` one render may make in total: nested loops cannot spin the event loop for minutes.
MAX_RANGE_ITEMS = 200_000
_WIDE_FIELD = re.compile(r"\d{6,}")  # a %-format or str.format width of 100000+ characters
_range_budget: ContextVar[list[int]] = ContextVar("range_budget")


def _bounded_range(*args: int) -> range:
    items = range(*args)
    budget = _range_budget.get([MAX_RANGE_ITEMS])
    budget[0] -= len(items)
    if budget[0] < 0:
        raise SecurityError(f"the template loops more than {MAX_RANGE_ITEMS} times")
    return items


def _too_big(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_RENDERED


class _Sandbox(SandboxedEnvironment):
    """Jinja's sandbox, plus bounds on what can make a huge string or loop from a tiny template."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and right > 64:
            raise SecurityError("exponents above 64 are refused in templates")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > MAX_RENDERED
                ):
                    raise SecurityError(f"a repeated sequence longer than {MAX_RENDERED} is refused")
        if operator == "%" and isinstance(left, str) and _WIDE_FIELD.search(left):
            raise SecurityError("format widths of 100000 or more are refused")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if any(_too_big(a) for a in (*args, *kwargs.values())):
            raise SecurityError(f"numbers above {MAX_RENDERED} are refused as call arguments")
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and _WIDE_FIELD.search(owner):
            raise SecurityError("format widths of 100000 or more are refused")
        return super().wrap_str_format(value)


def _environment(autoescape: bool) -> SandboxedEnvironment:
    # StrictUndefined: a variable the data lacks is an error the caller sees (422), not a silent blank.
    env = _Sandbox(autoescape=autoescape, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.globals["range"] = _bounded_range
    env.globals.pop("lipsum", None)  # generates text of any requested size
    for name in ("center", "indent", "format", "wordwrap", "truncate"):
        env.filters[name] = _sized(env.filters[name])
    return env


def _sized(filter_: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that refuses huge numeric arguments and wide %-formats before it allocates anything."""

    @functools.wraps(filter_)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        if any(_too_big(a) for a in (*args, *kwargs.values())):
            raise SecurityError(f"numbers above {MAX_RENDERED} are refused as filter arguments")
        if (
            any(isinstance(a, str) and _WIDE_FIELD.search(a) for a in args[:1])
            and filter_.__name__ == "do_format"
        ):
            raise SecurityError("format widths of 100000 or more are refused")
        return filter_(*args, **kwargs)

    return bounded


class Renderer:
    """Compiles and renders the three parts of a template; compiled templates are cached by source."""

    def __init__(self, cache_size: int = 256) -> None:
        self._plain = _environment(autoescape=False)
        self._html = _environment(autoescape=True)
        self._cache: dict[tuple[bool, str], jinja2.Template] = {}
        self._cache_size = cache_size

    def check(self, subject: str, html: str, text: str) -> None:
        """Compile each part; 422 naming the part and line of the first syntax error."""
        for part, source in (("subject", subject), ("html", html), ("text", text)):
            if len(source) > MAX_SOURCE:
                raise Unprocessable(f"template {part} is longer than {MAX_SOURCE} characters")
            self._compile(part, source, part == "html")

    def render(self, subject: str, html: str, text: str, data: Mapping[str, Any]) -> Rendered:
        """Render the three parts with ``data``; 422 if a variable is missing or the sandbox objects."""
        return Rendered(
            subject=self._render("subject", subject, data, autoescape=False).strip(),
            html=self._render("html", html, data, autoescape=True),
            text=self._render("text", text, data, autoescape=False),
        )

    def _compile(self, part: str, source: str, autoescape: bool) -> jinja2.Template:
        key = (autoescape, source)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        env = self._html if autoescape else self._plain
        try:
            compiled = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise Unprocessable(
                f"template {part} does not parse (line {exc.lineno}): {exc.message}"
            ) from None
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = compiled
        return compiled

    def _render(self, part: str, source: str, data: Mapping[str, Any], autoescape: bool) -> str:
        template = self._compile(part, source, autoescape)
        budget = _range_budget.set([MAX_RANGE_ITEMS])
        try:
            return "".join(_bounded(template.generate(dict(data)), part))
        except SecurityError as exc:
            raise Unprocessable(f"template {part} was refused by the sandbox: {exc}") from None
        except jinja2.UndefinedError as exc:
            raise Unprocessable(f"template {part} needs data it was not given: {exc.message}") from None
        except (jinja2.TemplateError, ArithmeticError, TypeError, ValueError, LookupError) as exc:
            raise Unprocessable(f"template {part} failed to render: {type(exc).__name__}: {exc}") from None
        finally:
            _range_budget.reset(budget)


def _bounded(chunks: Iterator[str], part: str) -> Iterator[str]:
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_RENDERED:
            raise Unprocessable(f"template {part} renders to more than {MAX_RENDERED} characters")
        yield chunk
