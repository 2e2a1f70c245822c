"""The trunk's settings from Config (sip_* settings, mapped in signaling/app.py) and
their errors."""

from __future__ import annotations

import ipaddress

import pytest

from signaling.app import create_app, trunk_settings
from signaling.config import ConfigError, load_config
from signaling.sip.connections import TcpLimits
from signaling.sip.message import SipTarget
from signaling.sip.trunk import TrunkSettings


def settings(**environ: str) -> TrunkSettings | None:
    env = {f"ANRUF_{k.upper()}": v for k, v in environ.items()}
    return trunk_settings(load_config(environ=env))


def test_no_listen_address_means_no_trunk() -> None:
    assert settings() is None


def test_settings_from_the_environment() -> None:
    result = settings(
        sip_listen="127.0.0.1:5060",
        sip_sbc="udp:127.0.0.1:5070, tcp:127.0.0.1:5071",
        sip_domain="anruf.example",
        sip_username="anruf",
        sip_password="pw",
        sip_inbound_username="sbc",
        sip_inbound_password="pw2",
        sip_inbound_algorithms="MD5",
        sip_max_calls_per_second="5",
        sip_options_interval="10",
    )
    assert result is not None
    assert (result.listen_host, result.listen_port) == ("127.0.0.1", 5060)
    assert result.transports == ("udp", "tcp")
    assert result.sbc == (SipTarget("udp", "127.0.0.1", 5070), SipTarget("tcp", "127.0.0.1", 5071))
    assert result.source_networks == (ipaddress.ip_network("127.0.0.1/32"),) * 2
    assert result.inbound_algorithms == ("MD5",)
    assert (result.max_calls_per_second, result.options_interval) == (5.0, 10.0)
    ipv6 = settings(sip_listen="[::1]:5080", sip_accepted_sources="10.0.0.0/8,::1")
    assert ipv6 is not None and (ipv6.listen_host, ipv6.listen_port) == ("::1", 5080)
    assert len(ipv6.source_networks) == 2


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"sip_listen": "localhost"}, "setting sip_listen: 'localhost' is not HOST:PORT"),
        ({"sip_listen": "sbc.example:5060"}, "setting sip_listen: 'sbc.example' is not an IP"),
        ({"sip_listen": "0.0.0.0:5060"}, "setting sip_listen: must be a concrete address"),
        ({"sip_sbc": "sctp:127.0.0.1:5070"}, "setting sip_sbc: 'sctp:127.0.0.1:5070': expected"),
        ({"sip_sbc": "udp:sbc.example:5070"}, "setting sip_sbc: udp:sbc.example:5070: the host"),
        ({"sip_sbc": "udp:127.0.0.1:99999"}, "setting sip_sbc: 'udp:127.0.0.1:99999': bad port"),
        ({"sip_transports": "udp", "sip_sbc": "tcp:127.0.0.1:5070"}, "tcp is not enabled"),
        ({"sip_transports": "udp,tls"}, "setting sip_transports"),
        ({"sip_accepted_sources": "10.0.0.300"}, "setting sip_accepted_sources: '10.0.0.300'"),
        ({"sip_username": "anruf"}, "setting sip_username: username and password go together"),
        ({"sip_inbound_password": "x"}, "setting sip_inbound_username"),
        ({"sip_inbound_algorithms": "SHA-512"}, "setting sip_inbound_algorithms"),
        ({"sip_max_concurrent_calls": "0"}, "setting sip_max_concurrent_calls: 0 must be"),
        ({"sip_requests_per_second": "-1"}, "setting sip_requests_per_second"),
        ({"sip_options_interval": "-5"}, "setting sip_options_interval"),
        ({"sip_max_message_bytes": "100"}, "setting sip_max_message_bytes: 100: 1024 to 65535"),
        ({"sip_domain": "bad domain"}, "setting sip_domain"),
        ({"sip_auth_max_failures": "-1"}, "setting sip_auth_max_failures: -1 must be >= 0"),
        ({"sip_auth_lockout_seconds": "0"}, "setting sip_auth_lockout_seconds: 0.0 must be"),
        ({"sip_tcp_max_connections": "0"}, "setting sip_tcp_max_connections: 0 must be >= 1"),
        (
            {"sip_tcp_reserved_connections": "300"},
            "setting sip_tcp_reserved_connections: 300 must be 0 to max_connections (256)",
        ),
        ({"sip_tcp_max_per_source": "0"}, "setting sip_tcp_max_per_source: 0 must be >= 1"),
        ({"sip_tcp_idle_timeout": "0"}, "setting sip_tcp_idle_timeout: 0.0 must be a positive"),
        ({"sip_tcp_accepted_idle_timeout": "-1"}, "setting sip_tcp_accepted_idle_timeout"),
        ({"sip_tcp_message_timeout": "inf"}, "setting sip_tcp_message_timeout: inf must be"),
    ],
)
def test_bad_values_are_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings(**{"sip_listen": "127.0.0.1:5060", **environ})
    assert message in str(info.value)


def test_the_server_header_and_the_digest_lockout_are_settings() -> None:
    default = settings(sip_listen="127.0.0.1:5060")
    assert default is not None
    # No product name for scanners; five wrong digests lock a source out for a minute.
    assert default.user_agent == ""
    assert (default.auth_max_failures, default.auth_lockout_seconds) == (5, 60.0)
    changed = settings(
        sip_listen="127.0.0.1:5060",
        sip_user_agent="Trunk",
        sip_auth_max_failures="3",
        sip_auth_lockout_seconds="600",
    )
    assert changed is not None
    assert (changed.user_agent, changed.auth_max_failures) == ("Trunk", 3)
    assert changed.auth_lockout_seconds == 600.0


def test_a_user_agent_is_one_line() -> None:
    with pytest.raises(ValueError, match="user_agent: must be one line"):
        TrunkSettings(user_agent="Trunk\r\nX-Injected: 1")


def test_the_tcp_limits_are_settings() -> None:
    default = settings(sip_listen="127.0.0.1:5060")
    assert default is not None and default.tcp_limits == TcpLimits()
    tcp = {
        "max_connections": "64",
        "reserved_connections": "16",
        "max_per_source": "2",
        "idle_timeout": "30",
        "accepted_idle_timeout": "900",
        "message_timeout": "5",
    }
    changed = settings(sip_listen="127.0.0.1:5060", **{f"sip_tcp_{k}": v for k, v in tcp.items()})
    assert changed is not None
    assert changed.tcp_limits == TcpLimits(64, 16, 2, 30.0, 900.0, 5.0)


def test_a_bad_sip_setting_fails_before_the_app_opens_anything() -> None:
    config = load_config(environ={"ANRUF_SIP_LISTEN": "127.0.0.1:5060", "ANRUF_SIP_SBC": "x"})
    with pytest.raises(ConfigError, match="setting sip_sbc"):
        create_app(config)
