"""The Mailer contract: every adapter (``capture``, ``smtp``, the AWS plugin's ``aws-ses`` on moto) delivers the same MIME.

Then what only the SMTP adapter can show: the URL forms (AUTH, STARTTLS, implicit TLS), connection
reuse, a down server as MailerUnavailable and a 550 as MailRejected, all against real aiosmtpd servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from appliance.config import ConfigError
from appliance.core.db import Database
from appliance.core.ids import new_id
from appliance.core.migrations import MIGRATIONS as CORE
from appliance.notify import Mailer, MailerUnavailable, MailRejected, OutgoingEmail
from appliance.notify.capture import CaptureMailer
from appliance.notify.schema import MIGRATIONS as NOTIFY
from appliance.notify.smtp import SmtpMailer, parse_smtp_url
from tests.notify_peers import parse_mail, self_signed, smtp_server
from tests.peers import HOST, SmtpPeer, free_port

Received = Callable[[int], Awaitable[list[bytes]]]


@dataclass
class Harness:
    mailer: Mailer
    received: Received  # the raw MIME of the first n messages delivered, in order


def body(raw: bytes, kind: str) -> str:
    part = parse_mail(raw).get_body(preferencelist=(kind,))
    assert part is not None and part.get_content_subtype() == kind
    return str(part.get_content()).replace("\r\n", "\n")


def message(to: list[str] | None = None, subject: str = "Hello", **parts: str) -> OutgoingEmail:
    return OutgoingEmail(
        id=new_id("eml"),
        tenant="default",
        sender="sender@appliance.test",
        to=to or ["ada@example.com"],
        subject=subject,
        html=parts.get("html", "<p>Hello <b>Ada</b></p>"),
        text=parts.get("text", "Hello Ada"),
    )


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(tmp_path / "mail.db")
    await db.open()
    await db.migrate([*CORE, *NOTIFY])
    yield db
    await db.close()


@pytest.fixture(params=["capture", "smtp", "aws-ses"])
async def harness(
    request: pytest.FixtureRequest, database: Database, smtp_peer: SmtpPeer
) -> AsyncIterator[Harness]:
    if request.param == "capture":
        capture = CaptureMailer(database)

        async def captured(n: int) -> list[bytes]:
            page = await capture.list("default", None, 1000, None)
            assert len(page.items) >= n
            return [item.mime.encode() for item in reversed(page.items)][:n]

        yield Harness(capture, captured)
        return
    if request.param == "aws-ses":
        from appliance_aws._aws import AwsClients
        from appliance_aws.ses import SesMailer

        moto = request.getfixturevalue("moto_peer")
        ses = SesMailer(AwsClients(**moto.client_kwargs()))
        await (await ses.clients.client("ses")).verify_email_identity(EmailAddress="sender@appliance.test")
        already = len(moto.data().get("ses", {}).get("RawMessage", []))

        async def sent_through_ses(n: int) -> list[bytes]:
            raw = moto.data()["ses"]["RawMessage"][already:]
            assert len(raw) >= n
            return [str(item["raw_data"]).encode() for item in raw[:n]]

        yield Harness(ses, sent_through_ses)
        await ses.close()
        return
    smtp_peer.clear()
    smtp = SmtpMailer(smtp_peer.url)

    async def delivered(n: int) -> list[bytes]:
        mails = await asyncio.to_thread(smtp_peer.wait_for, n)
        return [m.data for m in mails[:n]]

    await smtp.start()
    yield Harness(smtp, delivered)
    await smtp.close()


async def test_sends_multipart_alternative_with_both_parts(harness: Harness) -> None:
    sent = message(subject="Grüße, Ada", html="<p>Hi <b>Ada</b></p>", text="Hi Ada")
    message_id = await harness.mailer.send(sent)
    (raw,) = await harness.received(1)
    mime = parse_mail(raw)
    assert mime.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in mime.iter_parts()] == ["text/plain", "text/html"]
    assert body(raw, "plain").strip() == "Hi Ada"
    assert "<b>Ada</b>" in body(raw, "html")
    assert mime["Subject"] == "Grüße, Ada" and mime["To"] == "ada@example.com"
    assert mime["From"] == "sender@appliance.test"
    assert mime["Message-ID"] == message_id and mime["X-Appliance-Email-Id"] == sent.id


async def test_every_recipient_is_addressed(harness: Harness) -> None:
    await harness.mailer.send(message(to=["a@example.com", "b@example.org"]))
    (raw,) = await harness.received(1)
    assert parse_mail(raw)["To"] == "a@example.com, b@example.org"


async def test_html_only_gets_a_text_part_and_text_only_an_html_part(harness: Harness) -> None:
    await harness.mailer.send(
        message(html="<h1>Title</h1><p>Body &amp; more</p><script>x()</script>", text="")
    )
    await harness.mailer.send(message(html="", text="line 1\n<line 2>"))
    first, second = await harness.received(2)
    assert body(first, "plain") == "Title\nBody & more\n"
    html = body(second, "html")
    assert "line 1<br>" in html and "&lt;line 2&gt;" in html


async def test_many_sends_in_a_row_all_arrive_in_order(harness: Harness) -> None:
    for index in range(10):
        await harness.mailer.send(message(subject=f"number {index}"))
    received = await harness.received(10)
    assert [parse_mail(raw)["Subject"] for raw in received] == [f"number {i}" for i in range(10)]


async def test_health_is_ok_and_names_the_backend(harness: Harness) -> None:
    status = await harness.mailer.health()
    assert status.ok and status.name == "mail" and status.backend == harness.mailer.name


# ------------------------------------------------------------------ SMTP only ---


async def test_smtp_reuses_one_connection_for_consecutive_sends() -> None:
    with smtp_server() as server:
        mailer = SmtpMailer(f"smtp://{HOST}:{server.port}")
        for _ in range(5):
            await mailer.send(message())
        await mailer.close()
        assert len(server.inbox.wait_for(5)) == 5
        assert server.inbox.connections == 1


async def test_smtp_reconnects_after_the_server_drops_an_idle_connection() -> None:
    with smtp_server() as server:
        mailer = SmtpMailer(f"smtp://{HOST}:{server.port}")
        await mailer.send(message())
        server.stop()  # drops the open session
        server.start()
        await mailer.send(message())
        await mailer.close()
        assert len(server.inbox.wait_for(2)) == 2


async def test_smtp_down_is_unavailable_and_health_says_so() -> None:
    mailer = SmtpMailer(f"smtp://{HOST}:{free_port()}?timeout=3")
    with pytest.raises(MailerUnavailable, match="unreachable"):
        await mailer.send(message())
    status = await mailer.health()
    assert not status.ok and "APPLIANCE_SMTP_URL" in status.detail


async def test_smtp_refused_recipient_is_rejected_for_good() -> None:
    with smtp_server(refuse=("nobody@example.com",)) as server:
        mailer = SmtpMailer(f"smtp://{HOST}:{server.port}")
        with pytest.raises(MailRejected, match="550"):
            await mailer.send(message(to=["nobody@example.com"]))
        # One good recipient among refused ones: delivered to the good one.
        await mailer.send(message(to=["nobody@example.com", "ada@example.com"]))
        await mailer.close()
        ((rcpts, _),) = server.inbox.wait_for(1)
        assert rcpts == ["ada@example.com"]


async def test_smtp_auth_with_credentials_from_the_url() -> None:
    with smtp_server(credentials=("mailer", "s3cr3t p@ss")) as server:
        good = SmtpMailer(f"smtp://mailer:s3cr3t%20p%40ss@{HOST}:{server.port}")
        await good.send(message())
        await good.close()
        assert len(server.inbox.wait_for(1)) == 1
        bad = SmtpMailer(f"smtp://mailer:wrong@{HOST}:{server.port}")
        with pytest.raises(MailerUnavailable, match="login refused"):
            await bad.send(message())


async def test_smtp_starttls_and_implicit_tls(tmp_path: Path) -> None:
    context, _ = self_signed(tmp_path)
    with smtp_server(starttls=context, credentials=("u", "p")) as server:
        mailer = SmtpMailer(f"smtp://u:p@{HOST}:{server.port}?starttls=true&verify=false")
        await mailer.send(message())
        await mailer.close()
        assert len(server.inbox.wait_for(1)) == 1
        # Without STARTTLS this server refuses to go on: the URL flag is what made it work.
        plain = SmtpMailer(f"smtp://u:p@{HOST}:{server.port}")
        with pytest.raises(MailerUnavailable):
            await plain.send(message())
    with smtp_server(implicit_tls=context) as server:
        mailer = SmtpMailer(f"smtps://{HOST}:{server.port}?verify=false")
        await mailer.send(message())
        await mailer.close()
        assert len(server.inbox.wait_for(1)) == 1
        strict = SmtpMailer(f"smtps://{HOST}:{server.port}?timeout=5")  # self-signed: refused
        with pytest.raises(MailerUnavailable):
            await strict.send(message())


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.com", ("mail.example.com", 25, None, None, False, False, True)),
        ("smtp://u:p%40ss@mail:587?starttls=true", ("mail", 587, "u", "p@ss", False, True, True)),
        ("smtps://mail?verify=false", ("mail", 465, None, None, True, False, False)),
        ("smtp://mail?starttls=1&timeout=2.5", ("mail", 587, None, None, False, True, True)),
    ],
)
def test_smtp_url_forms(url: str, expected: tuple[object, ...]) -> None:
    s = parse_smtp_url(url)
    assert (s.host, s.port, s.username, s.password, s.implicit_tls, s.starttls, s.verify) == expected
    assert "p@ss" not in s.display


@pytest.mark.parametrize(
    "url",
    ["http://mail", "smtp://", "smtps://mail?starttls=true", "smtp://mail?starttls=maybe", "smtp://m:99999"],
)
def test_smtp_url_errors_never_echo_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_smtp_url(url.replace("smtp://", "smtp://user:hunter2@", 1) if "@" not in url else url)
    assert "hunter2" not in str(caught.value)


def test_outgoing_email_is_a_plain_record() -> None:
    sent = message()
    assert msgspec.json.decode(msgspec.json.encode(sent), type=OutgoingEmail) == sent
