"""Settings: environment, TOML file, precedence, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import ConfigError, Settings, describe_settings, load_settings


def test_defaults_need_no_configuration() -> None:
    settings = load_settings(env={})
    assert settings.data_dir == "./data" and settings.port == 8000 and settings.redis_url == ""
    assert settings.rate("rate_limit_per_key") == ("second", 1000)


def test_environment_overrides_toml_which_overrides_defaults(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text('port = 9000\nmail_from = "ops@example.com"\n')
    settings = load_settings(env={"APPLIANCE_PORT": "9100"}, config_file=config)
    assert settings.port == 9100 and settings.mail_from == "ops@example.com"
    via_env = load_settings(env={"APPLIANCE_CONFIG": str(config)})
    assert via_env.port == 9000


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"APPLIANCE_PORT": "eighty"}, "APPLIANCE_PORT"),
        ({"APPLIANCE_PORT": "70000"}, "APPLIANCE_PORT"),
        ({"APPLIANCE_S3_SECURE": "maybe"}, "APPLIANCE_S3_SECURE"),
        ({"APPLIANCE_RATE_LIMIT_PER_KEY": "lots"}, "APPLIANCE_RATE_LIMIT_PER_KEY"),
        ({"APPLIANCE_LOG_LEVEL": "chatty"}, "APPLIANCE_LOG_LEVEL"),
        ({"APPLIANCE_STORAGE_MAX_OBJECT_BYTES": "0"}, "APPLIANCE_STORAGE_MAX_OBJECT_BYTES"),
    ],
)
def test_invalid_values_fail_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(env=env)


def test_a_bad_root_key_is_rejected_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"APPLIANCE_ROOT_KEY": "short"})
    assert "APPLIANCE_ROOT_KEY" in str(caught.value) and "short" not in str(caught.value)


def test_toml_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("port = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(env={}, config_file=bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="colour"):
        load_settings(env={}, config_file=unknown)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(env={}, config_file=tmp_path / "missing.toml")


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = describe_settings()
    assert len(rows) == len(Settings.__struct_fields__)
    for variable, _, _ in rows:
        assert f"`{variable}`" in readme, f"README.md's configuration table lacks {variable}"
