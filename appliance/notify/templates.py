"""Email templates: Jinja2 in its sandbox, HTML autoescaped, checked when saved, bounded when rendered.

A template has three parts: ``subject`` and ``text`` (rendered without escaping, they are not HTML) and
``html`` (every ``{{ variable }}`` is HTML-escaped unless the author marks it ``|safe``). The sandbox
refuses attribute access to internals (``__class__``, ``mro``...) and unsafe calls, so a template
cannot reach Python objects beyond the data it is given; ``range`` is capped by the sandbox and the
rendered output is capped here, so a template cannot make the box build an endless string.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from appliance.core.errors import Unprocessable

__all__ = ["MAX_RENDERED", "MAX_SOURCE", "Rendered", "Renderer"]

MAX_SOURCE = 256 * 1024
MAX_RENDERED = 2 * 1024 * 1024


class Rendered(NamedTuple):
    subject: str
    html: str
    text: str


def _environment(autoescape: bool) -> SandboxedEnvironment:
    # StrictUndefined: a variable the data lacks is an error the caller sees (422), not a silent blank.
    return SandboxedEnvironment(
        autoescape=autoescape, undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )


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
        try:
            return "".join(_bounded(template.generate(dict(data)), part))
        except jinja2.exceptions.SecurityError as exc:
            raise Unprocessable(f"template {part} was refused by the sandbox: {exc}") from None
        except jinja2.UndefinedError as exc:
            raise Unprocessable(f"template {part} needs data it was not given: {exc.message}") from None
        except (jinja2.TemplateError, ArithmeticError, TypeError, ValueError, LookupError) as exc:
            raise Unprocessable(f"template {part} failed to render: {type(exc).__name__}: {exc}") from None


def _bounded(chunks: Iterator[str], part: str) -> Iterator[str]:
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_RENDERED:
            raise Unprocessable(f"template {part} renders to more than {MAX_RENDERED} characters")
        yield chunk
