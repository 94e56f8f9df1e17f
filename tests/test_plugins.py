"""The plugin interface: every hook works, is documented with its exact signature, and has a test here.

The first-party ``hello`` plugin (plugins/hello, installed by install.sh) is the worked example.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import appliance_hello
from click.testing import CliRunner
from litestar import Litestar
from litestar.testing import AsyncTestClient

from appliance.app import assemble, create_app
from appliance.cli import cli, main
from appliance.config import Settings
from appliance.plugin import HookSpecs, hookimpl, load_plugins
from tests.conftest import ROOT, MakeTenant, make_settings

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "plugins.md"
HOOKS = sorted(name for name in vars(HookSpecs) if name.startswith("appliance_"))
Client = AsyncTestClient[Litestar]


def _signature(name: str) -> str:
    fn = getattr(HookSpecs, name)
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    shown = ", ".join(f"{p.name}: {p.annotation}" for p in params)
    return f"def {name}({shown}) -> {inspect.signature(fn).return_annotation}"


def test_every_hook_has_a_docstring_and_is_documented_with_its_exact_signature() -> None:
    guide = GUIDE.read_text()
    for name in HOOKS:
        assert (getattr(HookSpecs, name).__doc__ or "").strip(), f"{name} has no docstring"
        assert _signature(name) in guide, f"docs/plugins.md lacks `{_signature(name)}`"


def test_every_hook_has_a_test() -> None:
    names = {n for n, _ in inspect.getmembers(sys.modules[__name__], inspect.isfunction)}
    missing = [hook for hook in HOOKS if f"test_hook_{hook}" not in names]
    assert not missing, f"hooks without a test_hook_<name> test: {missing}"


def test_the_guide_shows_the_example_plugin_as_it_is() -> None:
    guide = GUIDE.read_text()
    source = Path(appliance_hello.__file__).read_text()
    assert source.strip() in guide, (
        "docs/plugins.md must include plugins/hello/appliance_hello/__init__.py verbatim"
    )


def test_installed_plugin_is_discovered_and_can_be_disabled() -> None:
    _, infos = load_plugins("all")
    hello = next(i for i in infos if i.name == "hello")
    assert hello.enabled and set(hello.hooks) == set(HOOKS)
    _, infos = load_plugins("none")
    assert not next(i for i in infos if i.name == "hello").enabled
    manager, _ = load_plugins("hello")
    assert manager.get_plugin("hello") is not None


def test_appliance_plugins_command_lists_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "plugins"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": ""},
    )
    assert re.search(r"^hello\s+0\.1\.0\s+enabled", result.stdout, re.M), result.stdout


async def test_hook_appliance_route_handlers(client: Client, make_tenant: MakeTenant) -> None:
    headers = await make_tenant("acme", ("storage",))
    first = (await client.get("/v1/hello", headers=headers)).json()
    second = (await client.get("/v1/hello", headers=headers)).json()
    assert first == {"message": "hello, acme", "tenant": "acme", "visits": 1}
    assert second["visits"] == 2
    assert (await client.get("/v1/hello")).status_code == 401


async def test_hook_appliance_migrations(client: Client, app: Litestar) -> None:
    rows = await app.state.ctx.db.fetchall("SELECT component, version FROM schema_migrations")
    assert ("hello", 1) in {(r[0], r[1]) for r in rows}


def test_hook_appliance_cli_commands() -> None:
    main_commands = set(cli.commands)
    runner = CliRunner()
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    # main() mounts plugin commands on the group before running it.
    try:
        sys.argv = ["appliance", "hello", "plugin-author"]
        main()
    except SystemExit as exit_:
        assert exit_.code == 0
    assert "hello" in cli.commands and "hello" not in main_commands


async def test_hook_appliance_job_handlers(settings: Settings) -> None:
    ctx, _ = assemble(settings)
    handler = ctx.job_handlers()["hello.echo"]

    class FakeJob:
        payload = {"x": 1}

    assert await handler(FakeJob()) == {"x": 1}


async def test_hook_appliance_event_handlers(settings: Settings) -> None:
    ctx, _ = assemble(settings)
    spec = next(s for s in ctx.event_handlers() if s.name == "hello.count")
    assert spec.pattern == {"type": [{"prefix": "hello."}]}
    async with ctx.running():

        class FakeEvent:
            tenant = "default"

        await spec.handler(ctx, FakeEvent())
        row = await ctx.db.fetchone("SELECT visits FROM hello_visits WHERE tenant_id = 'default'")
        assert row is not None and row["visits"] == 1


async def test_plugin_job_handler_runs_through_the_queue(tmp_path: Path) -> None:
    from appliance.jobs import JobService

    # No background worker: the test drains the queue itself, in its own event loop.
    async with AsyncTestClient(create_app(make_settings(tmp_path, worker=False))) as client:
        created = await client.post(
            "/v1/queues/q/jobs", json={"type": "hello.echo", "payload": {"x": 1}}, headers=ROOT
        )
        assert created.status_code == 201, created.text
        await client.app.state.ctx.service("jobs", JobService).drain()
        job = (await client.get(f"/v1/queues/q/jobs/{created.json()['id']}", headers=ROOT)).json()
        assert job["status"] == "succeeded" and job["result"] == {"x": 1}


async def test_plugin_event_handler_runs_for_matching_events(tmp_path: Path) -> None:
    from appliance.events import EventService

    async with AsyncTestClient(create_app(make_settings(tmp_path, worker=False))) as client:
        for event_type in ("hello.wave", "other.thing", "hello.bow"):
            posted = await client.post(
                "/v1/events", json={"source": "test", "type": event_type, "payload": {}}, headers=ROOT
            )
            assert posted.status_code == 202, posted.text
        await client.app.state.ctx.service("events", EventService).drain()
        # Two hello.* events counted, plus this visit.
        assert (await client.get("/v1/hello", headers=ROOT)).json()["visits"] == 3


async def test_hook_appliance_admin_panels(client: Client) -> None:
    ctx = client.app.state.ctx
    panels = [p for group in ctx.plugins.hook.appliance_admin_panels() for p in group]
    hello = next(p for p in panels if p.id == "hello")
    module = await client.get(hello.module_url)
    assert module.status_code == 200 and "export async function render" in module.text


def test_hook_appliance_backends(settings: Settings, tmp_path: Path) -> None:
    ctx, _ = assemble(settings)
    assert ctx.plugin_backend("greeter") is None  # not chosen: the built-in stays
    chosen = make_settings(tmp_path / "other", backends="greeter=memory")
    ctx, _ = assemble(chosen)
    assert ctx.plugin_backend("greeter").greet("you") == "hello, you"


async def test_hook_appliance_startup(settings: Settings) -> None:
    appliance_hello.STARTED.clear()
    app = create_app(settings)
    async with AsyncTestClient(app):
        assert appliance_hello.STARTED == ["started"]


async def test_hook_appliance_shutdown(settings: Settings) -> None:
    appliance_hello.STARTED.clear()
    async with AsyncTestClient(create_app(settings)):
        pass
    assert appliance_hello.STARTED == ["started", "stopped"]


async def test_plugins_passed_directly_are_registered(settings: Settings) -> None:
    class Extra:
        __name__ = "extra"

        @hookimpl
        def appliance_job_handlers(self) -> dict[str, object]:
            return {"extra.job": lambda job: job}

    ctx, _ = assemble(settings, extra_plugins=[Extra()])
    assert "extra.job" in ctx.job_handlers()
    assert any(i.name == "extra" for i in ctx.plugin_infos)


def test_unknown_backend_choice_fails_clearly(tmp_path: Path) -> None:
    ctx, _ = assemble(make_settings(tmp_path, backends="greeter=nope"))
    try:
        ctx.plugin_backend("greeter")
    except ValueError as exc:
        assert "nope" in str(exc) and "memory" in str(exc)
    else:
        raise AssertionError("expected a ConfigError")


async def test_root_is_usable_with_hello(client: Client) -> None:
    assert (await client.get("/v1/hello", headers=ROOT)).json()["tenant"] == "default"
