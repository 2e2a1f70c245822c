from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from signaling.config import SECTIONS, Config, ConfigError, load_config, section_of


def test_defaults_file_env_and_flags_in_that_order(tmp_path: Path) -> None:
    file = tmp_path / "anruf.toml"
    file.write_text(
        'port = 9000\nring_timeout = 30\nice_servers = ["stun:stun.example.net:3478"]\n'
    )
    config = load_config(
        file,
        environ={"ANRUF_RING_TIMEOUT": "20", "ANRUF_DATA_DIR": "/var/lib/anruf"},
        overrides={"ring_timeout": 10.0, "host": None},
    )
    assert config.port == 9000  # file
    assert config.ice_servers == ("stun:stun.example.net:3478",)
    assert config.data_dir == Path("/var/lib/anruf")  # environment
    assert config.ring_timeout == 10.0  # flag beats environment
    assert config.host == "127.0.0.1"  # an unset flag changes nothing
    assert config.resolved_database_url == "sqlite+aiosqlite:////var/lib/anruf/anruf.sqlite3"


def test_bad_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="setting port: 'eighty' is not a valid int"):
        load_config(environ={"ANRUF_PORT": "eighty"})
    file = tmp_path / "anruf.toml"
    file.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_config(file, environ={})
    file.write_text("port = \n")
    with pytest.raises(ConfigError, match="config file"):
        load_config(file, environ={})


def test_relay_hosts_need_redis_and_a_relay_secret() -> None:
    registry = {"ANRUF_RELAY_SOURCE": "registry"}
    with pytest.raises(ConfigError, match="set redis_url"):
        load_config(environ=registry)
    registry["ANRUF_REDIS_URL"] = "redis://127.0.0.1:6379/2"
    with pytest.raises(ConfigError, match="relay_secret"):
        load_config(environ=registry)
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_config(environ={**registry, "ANRUF_RELAY_SECRET": "too-short"})
    config = load_config(environ={**registry, "ANRUF_RELAY_SECRET": "test-relay-secret-0001"})
    assert config.relay_secret == "test-relay-secret-0001"
    with pytest.raises(ConfigError, match="relay_source must be local or registry"):
        load_config(environ={"ANRUF_RELAY_SOURCE": "elsewhere"})


def test_every_setting_is_in_one_section_and_config_is_all_of_them() -> None:
    seen: list[str] = []
    for section in SECTIONS:
        assert section.SECTION
        assert isinstance(Config(), section)  # a part can ask for just its section
        seen += [f.name for f in fields(section)]
    assert sorted(seen) == sorted(f.name for f in fields(Config))
    assert len(seen) == len(set(seen))
    assert section_of("relay_mode") == "relay"
    assert section_of("database_pool_size") == "database"


def test_choices_are_checked_once_with_the_setting_and_its_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="relay_mode must be forward or transcode, not 'mix'"):
        load_config(environ={"ANRUF_RELAY_MODE": "mix"})
    with pytest.raises(ConfigError, match="event_loop must be auto, uvloop or asyncio, not 'x'"):
        load_config(environ={}, overrides={"event_loop": "x"})
    file = tmp_path / "anruf.toml"
    file.write_text('sms_sender = "pigeon"\n')
    with pytest.raises(ConfigError, match="sms_sender must be console or carrier, not 'pigeon'"):
        load_config(file, environ={})
    with pytest.raises(ConfigError, match="relay_source must be local or registry"):
        Config(relay_source="elsewhere")  # type: ignore[arg-type]
    assert load_config(environ={"ANRUF_RELAY_MODE": "transcode"}).relay_mode == "transcode"


def test_a_file_may_group_settings_in_section_tables(tmp_path: Path) -> None:
    file = tmp_path / "anruf.toml"
    file.write_text(
        'port = 9000\n[relay]\nrelay_mode = "transcode"\nrelay_workers = 0\n'
        "[database]\ndatabase_pool_size = 5\n"
    )
    config = load_config(file, environ={})
    assert (config.port, config.relay_mode, config.relay_workers) == (9000, "transcode", 0)
    assert config.database_pool_size == 5
    file.write_text('[media]\nrelay_mode = "forward"\n')
    with pytest.raises(ConfigError, match=r"relay_mode belongs in \[relay\], not \[media\]"):
        load_config(file, environ={})
    file.write_text("[relay]\ncolour = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'colour' in \[relay\]"):
        load_config(file, environ={})


def test_the_operations_guide_lists_every_setting_under_its_section() -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    rows = {
        cells[0]: set(re.findall(r"`(\w+)`", cells[2]))
        for line in guide.splitlines()
        if line.startswith("| ")
        and len(cells := [c.strip() for c in line.strip("|").split("|")]) == 3
    }
    for section in SECTIONS:
        assert rows.get(section.SECTION) == {f.name for f in fields(section)}, section.SECTION


def test_a_relay_host_is_built_from_the_nodes_settings() -> None:
    from signaling.app import relay_host_settings

    secret = "test-relay-secret-0001"
    with pytest.raises(ConfigError, match="registers in Redis"):
        relay_host_settings(load_config(environ={"ANRUF_RELAY_SECRET": secret}))
    config = load_config(
        environ={
            "ANRUF_REDIS_URL": "redis://127.0.0.1:6379/2",
            "ANRUF_RELAY_SECRET": secret,
            "ANRUF_RELAY_CONTROL_LISTEN": "127.0.0.1:7401",
            "ANRUF_MEDIA_PORT_MIN": "40000",
            "ANRUF_MEDIA_PORT_MAX": "40999",
            "ANRUF_RELAY_MODE": "transcode",
            "ANRUF_RELAY_CAPACITY": "500",
        }
    )
    settings = relay_host_settings(config)
    assert (settings.control_listen, settings.redis_url, settings.secret) == (
        "127.0.0.1:7401",
        "redis://127.0.0.1:6379/2",
        secret,
    )
    assert settings.media.media_ports == (40000, 40999)
    assert settings.media.relay_mode == "transcode"
    assert settings.capacity == 500
    with pytest.raises(ValueError, match="at least 16 characters"):
        relay_host_settings(config.replace(relay_secret="short"))
