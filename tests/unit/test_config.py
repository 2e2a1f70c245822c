from __future__ import annotations

from pathlib import Path

import pytest

from signaling.config import ConfigError, load_config


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
