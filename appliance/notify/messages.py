"""Email addresses, subjects and MIME: what may go into a header, and the message that leaves the box.

Everything a client sends that ends up in a header is checked here, before anything is stored:
a CR or LF (header injection), any other control character or a malformed address is a 422.
Messages are ``multipart/alternative`` with a plain-text and an HTML part, built by the standard
library's :class:`email.message.EmailMessage` with the SMTP policy (CRLF line ends, RFC 2047 words).
"""

from __future__ import annotations

import binascii
import re
import secrets
from email import message_from_bytes
from email.header import Header
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import formatdate, make_msgid
from html import escape
from html.parser import HTMLParser
from typing import NamedTuple

import msgspec

from appliance.core.errors import Unprocessable

__all__ = [
    "MAX_RECIPIENTS",
    "Composed",
    "MailRejected",
    "MailerUnavailable",
    "OutgoingEmail",
    "PushTarget",
    "PushUnavailable",
    "check_address",
    "check_recipients",
    "check_subject",
    "compose",
    "html_to_text",
    "parse",
]

MAX_RECIPIENTS = 50
MAX_SUBJECT = 998  # RFC 5322's hard line limit
# A deliberately plain addr-spec: dot-atom local part, a dotted domain (or IP literal-free host name).
_ADDRESS = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class MailerUnavailable(Exception):
    """The mail server could not take the message now (down, 4xx, timeout): try again later."""


class MailRejected(Exception):
    """The mail server refused the message for good (5xx): retrying will not help."""


class PushUnavailable(Exception):
    """The push service could not take the message now (unreachable, 429, 5xx): try again later."""


class PushTarget(msgspec.Struct, frozen=True):
    """Where one browser subscription receives pushes: its endpoint and its encryption keys."""

    endpoint: str
    p256dh: str
    auth: str


class OutgoingEmail(msgspec.Struct, kw_only=True):
    """One rendered message, ready for a :class:`~appliance.notify.Mailer`."""

    id: str
    tenant: str
    sender: str
    to: list[str]
    subject: str
    html: str
    text: str


def check_address(value: str, what: str = "address") -> str:
    """``value`` if it is a plain ``local@domain`` address; 422 naming ``what`` otherwise."""
    if "\r" in value or "\n" in value:
        raise Unprocessable(f"{what} {value!r} contains a line break (header injection is refused)")
    if len(value) > 254 or len(value.partition("@")[0]) > 64 or not _ADDRESS.match(value):
        raise Unprocessable(f"{what} {value!r} is not a valid email address (expected local@domain)")
    return value


def check_subject(value: str) -> str:
    """``value`` if it is one header line without control characters; 422 otherwise."""
    if "\r" in value or "\n" in value:
        raise Unprocessable("subject contains a line break (header injection is refused)")
    if _CONTROL.search(value):
        raise Unprocessable("subject contains a control character")
    if not value.strip():
        raise Unprocessable("subject is empty")
    if len(value) > MAX_SUBJECT:
        raise Unprocessable(f"subject is longer than {MAX_SUBJECT} characters")
    return value


def check_recipients(values: list[str]) -> list[str]:
    if not values:
        raise Unprocessable("'to' needs at least one address")
    if len(values) > MAX_RECIPIENTS:
        raise Unprocessable(f"'to' has more than {MAX_RECIPIENTS} addresses; use POST /v1/email:bulk")
    return [check_address(v, "recipient") for v in values]


class Composed(NamedTuple):
    """A message ready for the wire: its ``Message-ID`` and its bytes (CRLF line ends)."""

    message_id: str
    data: bytes


def compose(message: OutgoingEmail) -> Composed:
    """The MIME message: ``multipart/alternative`` (text first, then HTML, as RFC 2046 prefers).

    Written out directly rather than through :class:`email.message.EmailMessage`, whose header
    parsing dominates the cost of a send: every header value here is already validated (addresses
    are plain ASCII ``local@domain``, the subject has no line break), the subject is RFC 2047-encoded
    when it is not short ASCII, and both bodies are UTF-8 quoted-printable, whose output can never
    contain the ``=_`` that starts the boundary.
    """
    message_id = make_msgid(idstring=message.id, domain=message.sender.rpartition("@")[2])
    boundary = f"=_appliance_{secrets.token_hex(12)}"
    head = "\r\n".join(
        [
            f"From: {message.sender}",
            "To: " + ",\r\n ".join(message.to),
            _subject_header(message.subject),
            f"Date: {formatdate(usegmt=True)}",
            f"Message-ID: {message_id}",
            f"X-Appliance-Email-Id: {message.id}",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
        ]
    )
    text = message.text or html_to_text(message.html)
    html = message.html or _text_to_html(message.text)
    data = b"".join(
        [
            head.encode("ascii"),
            b"\r\n\r\n",
            _part(boundary, "plain", text),
            _part(boundary, "html", html),
            f"--{boundary}--\r\n".encode("ascii"),
        ]
    )
    return Composed(message_id, data)


def _subject_header(subject: str) -> str:
    if subject.isascii() and len(subject) <= 68:
        return f"Subject: {subject}"
    return "Subject: " + Header(subject, "utf-8", header_name="Subject").encode(linesep="\r\n")


def _part(boundary: str, subtype: str, body: str) -> bytes:
    lines = body.replace("\r\n", "\n").replace("\r", "\n")
    encoded = binascii.b2a_qp(lines.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")
    head = (
        f'--{boundary}\r\nContent-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    # The CRLF before a boundary belongs to the boundary (RFC 2046), so the body keeps its own last one.
    return head.encode("ascii") + encoded + b"\r\n"


def parse(data: bytes) -> EmailMessage:
    """Parse a composed (or received) message back into an :class:`EmailMessage`."""
    parsed = message_from_bytes(data, policy=default_policy)
    assert isinstance(parsed, EmailMessage)
    return parsed


class _TextExtractor(HTMLParser):
    _SKIP = frozenset({"script", "style", "head", "title"})
    _BREAK = frozenset({"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BREAK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """A plain-text rendering of ``html`` for the text part, when only HTML was given."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line) + "\n"


def _text_to_html(text: str) -> str:
    body = "<br>\n".join(escape(line) for line in text.splitlines())
    return f"<!doctype html><html><body><p>{body}</p></body></html>\n"
