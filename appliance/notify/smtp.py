"""The ``smtp`` mailer: any SMTP server, through aiosmtplib.

``APPLIANCE_SMTP_URL`` is ``smtp://[user:pass@]host[:port][?starttls=true]`` (port 25 by default, 587
with STARTTLS) or ``smtps://...`` for implicit TLS (port 465 by default). ``?verify=false`` accepts
a self-signed certificate; ``?timeout=`` sets the per-command timeout in seconds (default 10).

Connections are kept open and reused: a small pool of authenticated sessions serves consecutive
sends (bulk mail pays the TCP, TLS and AUTH handshakes once per connection, not once per message).
A connection the server dropped while idle is replaced transparently, once per send.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

from appliance.config import ConfigError
from appliance.core.context import BackendStatus
from appliance.notify.messages import MailerUnavailable, MailRejected, OutgoingEmail, compose

__all__ = ["SmtpMailer", "SmtpSettings", "parse_smtp_url"]


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    username: str | None
    password: str | None
    implicit_tls: bool
    starttls: bool
    verify: bool
    timeout: float

    @property
    def display(self) -> str:
        """Where mail goes, without the credentials (for health details and logs)."""
        scheme = "smtps" if self.implicit_tls else "smtp"
        return f"{scheme}://{self.host}:{self.port}" + ("?starttls=true" if self.starttls else "")


def _flag(query: dict[str, list[str]], name: str, default: bool) -> bool:
    values = query.get(name)
    if not values:
        return default
    value = values[-1].lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"APPLIANCE_SMTP_URL: ?{name}= must be true or false")
    return value in ("true", "1", "yes")


def parse_smtp_url(url: str) -> SmtpSettings:
    """Parse ``APPLIANCE_SMTP_URL``; :class:`ConfigError` (never echoing the password) if it is malformed."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise ConfigError("APPLIANCE_SMTP_URL must start with smtp:// or smtps://")
    if not parts.hostname:
        raise ConfigError("APPLIANCE_SMTP_URL names no host (expected smtp://user:pass@host:port)")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError("APPLIANCE_SMTP_URL has an invalid port") from None
    query = parse_qs(parts.query)
    implicit = parts.scheme == "smtps"
    starttls = _flag(query, "starttls", False)
    if implicit and starttls:
        raise ConfigError("APPLIANCE_SMTP_URL: smtps:// is already TLS; drop ?starttls=true")
    try:
        timeout = float(query.get("timeout", ["10"])[-1])
    except ValueError:
        raise ConfigError("APPLIANCE_SMTP_URL: ?timeout= must be a number of seconds") from None
    return SmtpSettings(
        host=parts.hostname,
        port=port or (465 if implicit else 587 if starttls else 25),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        implicit_tls=implicit,
        starttls=starttls,
        verify=_flag(query, "verify", True),
        timeout=timeout,
    )


# Errors that mean "the connection is gone or never came": worth one fresh connection, then a retry later.
_CONNECTION_ERRORS = (
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPConnectError,
    ConnectionError,
    OSError,
)


class SmtpMailer:
    """Sends through an SMTP server, reusing up to ``pool_size`` connections."""

    name = "smtp"
    mode: Literal["embedded", "server"] = "server"
    delivered_status: Literal["sent", "captured"] = "sent"

    def __init__(self, url: str, pool_size: int = 4) -> None:
        self.settings = parse_smtp_url(url)
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(pool_size)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            await _quit(client)

    def _client(self) -> aiosmtplib.SMTP:
        s = self.settings
        return aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            username=s.username,
            password=s.password,
            use_tls=s.implicit_tls,
            start_tls=s.starttls,
            validate_certs=s.verify,
            timeout=s.timeout,
        )

    async def _connected(self) -> aiosmtplib.SMTP:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client
        client = self._client()
        await client.connect()  # EHLO, STARTTLS and AUTH happen here, per the settings
        return client

    async def send(self, message: OutgoingEmail) -> str:
        composed = compose(message)
        async with self._slots:
            for attempt in (1, 2):
                try:
                    client = await self._connected()
                except aiosmtplib.SMTPAuthenticationError as exc:
                    raise MailerUnavailable(f"SMTP login refused at {self.settings.display}: {exc}") from None
                except (*_CONNECTION_ERRORS, aiosmtplib.SMTPException, TimeoutError) as exc:
                    raise MailerUnavailable(
                        f"SMTP server {self.settings.display} unreachable: {exc}"
                    ) from None
                try:
                    await client.sendmail(message.sender, message.to, composed.data)
                except _CONNECTION_ERRORS as exc:
                    await _quit(client)
                    if attempt == 2:
                        raise MailerUnavailable(f"SMTP connection lost: {exc}") from None
                    continue  # a connection dropped while idle: once more on a fresh one
                except aiosmtplib.SMTPException as exc:
                    await _quit(client)
                    raise _classify(exc) from None
                self._idle.append(client)
                return composed.message_id
        raise MailerUnavailable("SMTP connection lost twice")  # pragma: no cover (the loop returns or raises)

    async def health(self) -> BackendStatus:
        start = time.perf_counter()
        client = self._client()
        try:
            await asyncio.wait_for(client.connect(), self.settings.timeout)
            await client.noop()
        except Exception as exc:
            return BackendStatus(
                name="mail",
                backend="smtp",
                mode="server",
                ok=False,
                detail=f"{self.settings.display} does not answer ({type(exc).__name__}: {exc});"
                " check APPLIANCE_SMTP_URL and that the server runs",
            )
        finally:
            await _quit(client)
        took = round((time.perf_counter() - start) * 1000, 1)
        return BackendStatus(
            name="mail", backend="smtp", mode="server", ok=True, detail=f"{self.settings.display} ({took} ms)"
        )


def _classify(exc: aiosmtplib.SMTPException) -> Exception:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        text = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        if codes and all(500 <= c < 600 for c in codes):
            return MailRejected(f"every recipient was refused: {text}")
        return MailerUnavailable(f"recipients refused for now: {text}")
    code = getattr(exc, "code", 0)
    if isinstance(code, int) and 500 <= code < 600:
        return MailRejected(f"SMTP server refused the message: {code} {getattr(exc, 'message', exc)}")
    return MailerUnavailable(f"SMTP server did not take the message: {exc}")


async def _quit(client: aiosmtplib.SMTP) -> None:
    if not client.is_connected:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.quit(), 2.0)
    if client.is_connected:
        client.close()
