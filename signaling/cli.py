"""The `anruf` command: serve, login, call, answer, operator."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import getpass
import ipaddress
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import wire
from signaling import logs

DEFAULT_PROFILE_DIR = Path(os.environ.get("ANRUF_PROFILE_DIR", "~/.config/anruf")).expanduser()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anruf", description="Voice calls between phone numbers")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the signaling server and media relay")
    serve.add_argument("--config", type=Path, help="TOML settings file")
    _settings_flags(
        serve,
        ("--host", {}),
        ("--port", {"type": int}),
        ("--data-dir", {"type": Path}),
        ("--database-url", {}),
        ("--media-bind-address", {}),
        ("--media-announce-address", {}),
        ("--media-port-min", {"type": int}),
        ("--media-port-max", {"type": int}),
        ("--test-number-prefix", {}),
        ("--test-code", {}),
        ("--ring-timeout", {"type": float}),
        ("--relay-mode", {}),
        ("--event-loop", {}),
        (
            "--relay-workers",
            {"type": int, "help": "relay processes: -1 one per core (default), 0 in-process"},
        ),
        ("--redis-url", {"help": "redis://HOST:PORT/DB shared by several nodes"}),
        ("--node-name", {"help": "this node's name in the cluster (default HOST:PORT)"}),
        ("--relay-source", {"help": "registry: relay hosts in Redis"}),
    )

    relay = commands.add_parser(
        "relay", help="run a relay host: media for signaling nodes, registered in Redis"
    )
    relay.add_argument("--config", type=Path, help="TOML settings file")
    relay.add_argument("--control", help="HOST:PORT for control connections (127.0.0.1:7400)")
    relay.add_argument("--control-announce", help="HOST:PORT nodes connect to, if not --control")
    relay.add_argument("--id", help="this relay host's id in Redis (default: its control address)")
    relay.add_argument("--redis-url", help="redis://HOST:PORT/DB shared with the signaling nodes")
    relay.add_argument("--media-bind-address")
    relay.add_argument("--media-announce-address")
    relay.add_argument("--media-port-min", type=int)
    relay.add_argument("--media-port-max", type=int)
    relay.add_argument("--relay-mode", choices=["forward", "transcode"])
    relay.add_argument("--capacity", type=int, help="legs before it takes no new calls; 0 no limit")
    relay.add_argument("--heartbeat", type=float, help="seconds between registrations")
    relay.add_argument("--ttl", type=float, help="seconds until a registration expires")
    relay.add_argument("--drain-timeout", type=float, help="seconds calls may go on after SIGTERM")
    relay.add_argument("--event-loop", choices=["auto", "uvloop", "asyncio"])

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--profile-dir", type=Path, default=DEFAULT_PROFILE_DIR)
        p.add_argument(
            "--media-address",
            help="address our media binds and offers (default: 127.0.0.1 for a loopback server)",
        )

    login = commands.add_parser("login", help="register this device for a phone number")
    login.add_argument("number")
    login.add_argument("--server", required=True, help="e.g. http://127.0.0.1:8080")
    login.add_argument("--code", help="the verification code (asked for when omitted)")
    login.add_argument("--name", default="anruf-cli")
    client_options(login)

    def media_options(p: argparse.ArgumentParser) -> None:
        client_options(p)
        p.add_argument("--play", default="silence", help="tone:FREQ, silence or a WAV file")
        p.add_argument("--record", type=Path, help="write what you hear to this WAV file")
        p.add_argument("--duration", type=float, default=10.0, help="seconds to talk")

    call = commands.add_parser("call", help="call a phone number")
    call.add_argument("number")
    media_options(call)
    answer = commands.add_parser("answer", help="wait for calls and answer them")
    answer.add_argument("--calls", type=int, default=1)
    media_options(answer)

    operator = commands.add_parser("operator", help="carrier operators (an admin's actions)")
    operator_commands = operator.add_subparsers(dest="operator_command", required=True)

    def database_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="TOML settings file (as for serve)")
        p.add_argument("--data-dir", type=Path)
        p.add_argument("--database-url")
        p.add_argument("--json", action="store_true", help="print JSON")

    operator_create = operator_commands.add_parser(
        "create", help="add an operator; prints its first API key and signing secret, once"
    )
    operator_create.add_argument("--name", required=True)
    operator_create.add_argument("--webhook-url", default="", help="where events are POSTed")
    operator_create.add_argument("--sms-url", default="", help="where verification SMS go")
    database_options(operator_create)
    database_options(operator_commands.add_parser("list", help="list the operators"))

    db = commands.add_parser("db", help="the database")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    database_options(
        db_commands.add_parser("upgrade", help="migrate the schema to this release (as serve does)")
    )

    from voice.loadtest.cli import add_parser as add_loadtest

    add_loadtest(commands)

    args = parser.parse_args(argv)
    logs.configure(args.verbose)
    if args.command == "serve":
        return _serve(args)
    if args.command == "relay":
        return _relay(args)
    if args.command == "operator":
        return _operator(args)
    if args.command == "db":
        return _db(args)
    if args.command == "loadtest":
        from voice.loadtest.cli import main as loadtest

        return loadtest(args)
    try:
        return asyncio.run(_CLIENT_COMMANDS[args.command](args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line for the user, not a traceback
        from voice.client.signaling import ServerError

        if isinstance(exc, ServerError | OSError | ValueError | TimeoutError):
            print(f"anruf: {exc}", file=sys.stderr)
            return 1
        raise


def _settings_flags(parser: argparse.ArgumentParser, *flags: tuple[str, dict[str, Any]]) -> None:
    """Flags named after settings, shown in --help under their settings' sections
    (signaling/config.py, docs/operations.md); a setting's choices are its flag's."""
    from signaling.config import SECTIONS, choices_of, section_of

    groups = {
        section.SECTION: parser.add_argument_group(f"{section.SECTION} settings")
        for section in SECTIONS
    }
    for flag, options in flags:
        name = flag[2:].replace("-", "_")
        if choices_of(name):
            options = {"choices": list(choices_of(name)), **options}
        groups[section_of(name)].add_argument(flag, **options)


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from signaling.app import create_app, drain_on_sigterm
    from signaling.config import ConfigError, load_config

    overrides = {
        name: getattr(args, name)
        for name in (
            "host",
            "port",
            "data_dir",
            "database_url",
            "media_bind_address",
            "media_announce_address",
            "media_port_min",
            "media_port_max",
            "test_number_prefix",
            "test_code",
            "ring_timeout",
            "relay_mode",
            "event_loop",
            "relay_workers",
            "redis_url",
            "node_name",
            "relay_source",
        )
    }
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"anruf: {exc}", file=sys.stderr)
        return 2
    config.data_dir.mkdir(parents=True, exist_ok=True)
    loop = _event_loop(config.event_loop)
    try:
        app = create_app(config)  # checks what only the parts can (the sip_* settings)
    except ConfigError as exc:
        print(f"anruf: {exc}", file=sys.stderr)
        return 2
    drain_on_sigterm(app)
    web.run_app(app, host=config.host, port=config.port, print=None, loop=loop)
    return 0


def _relay(args: argparse.Namespace) -> int:
    """A relay host until SIGTERM or SIGINT (a second one ends its drain at once)."""
    from redis.exceptions import RedisError

    from signaling.app import relay_host_settings, run_relay_host
    from signaling.config import ConfigError, load_config
    from voice.relay.host import HostIdInUse

    flags = {
        "relay_control_listen": args.control,
        "relay_control_announce": args.control_announce,
        "relay_host_id": args.id,
        "redis_url": args.redis_url,
        "media_bind_address": args.media_bind_address,
        "media_announce_address": args.media_announce_address,
        "media_port_min": args.media_port_min,
        "media_port_max": args.media_port_max,
        "relay_mode": args.relay_mode,
        "relay_capacity": args.capacity,
        "relay_heartbeat": args.heartbeat,
        "relay_host_ttl": args.ttl,
        "relay_drain_timeout": args.drain_timeout,
        "event_loop": args.event_loop,
    }
    try:
        config = load_config(args.config, overrides=flags)
        settings = relay_host_settings(config)
    except (ConfigError, ValueError) as exc:
        print(f"anruf: {exc}", file=sys.stderr)
        return 2

    loop = _event_loop(config.event_loop)
    try:
        loop.run_until_complete(run_relay_host(settings))
    except (OSError, ValueError, HostIdInUse, RedisError) as exc:
        print(f"anruf: relay host: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    return 0


def _operator(args: argparse.Namespace) -> int:
    from signaling.config import ConfigError, load_config

    overrides = {"data_dir": args.data_dir, "database_url": args.database_url}
    try:
        config = load_config(args.config, overrides=overrides)
        return asyncio.run(_operator_command(args, config))
    except (ConfigError, ValueError) as exc:
        print(f"anruf: {exc}", file=sys.stderr)
        return 2


async def _operator_command(args: argparse.Namespace, config: Any) -> int:
    from datetime import UTC, datetime

    from signaling.carrier.operators import check_url
    from signaling.store.database import Database
    from signaling.store.operators import OperatorStore

    if args.operator_command == "create":
        for url in (args.webhook_url, args.sms_url):
            check_url(url)  # before anything is written
    database = await Database.open(config.resolved_database_url)
    try:
        store = OperatorStore(database, default_region=config.default_region)
        if args.operator_command == "create":
            new = await store.create_operator(args.name, args.webhook_url, args.sms_url)
            op = new.operator
            if args.json:
                shown = {"operator_id": op.operator_id, "name": op.name, "key_id": new.key_id}
                shown |= {"api_key": new.api_key, "signing_secret": new.signing_secret}
                print(json.dumps(shown))
            else:
                print(f"Operator {op.operator_id} ({op.name}) created.")
                print(f"API key:        {new.api_key}")
                print(f"Signing secret: {new.signing_secret}")
                print("Both are shown only now; give them to the operator over a safe channel.")
            return 0
        found = await store.list_operators()
    finally:
        await database.close()
    if args.json:
        print(json.dumps([dataclasses.asdict(op) for op in found]))
        return 0
    for op in found:
        created = datetime.fromtimestamp(op.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        print(f"{op.operator_id}  {created}  {op.name}  webhook: {op.webhook_url or '-'}")
    return 0


def _db(args: argparse.Namespace) -> int:
    """``anruf db upgrade``: run the schema migrations now, not at the next start."""
    from signaling.config import ConfigError, load_config
    from signaling.store.database import Database
    from signaling.store.migrations import LATEST, SchemaVersionError

    overrides = {"data_dir": args.data_dir, "database_url": args.database_url}
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"anruf: {exc}", file=sys.stderr)
        return 2

    async def upgrade() -> None:
        database = await Database.open(config.resolved_database_url)
        await database.close()

    try:
        asyncio.run(upgrade())
    except SchemaVersionError as exc:
        print(f"anruf: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"schema_version": LATEST}))
    else:
        print(f"Database schema at version {LATEST}.")
    return 0


def _event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """uvloop makes every forwarded packet cheaper; the stock loop is the fallback."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


# Client commands ----------------------------------------------------------


def _profile_path(args: argparse.Namespace) -> Path:
    return Path(args.profile_dir) / "profile.json"


def _load_profile(args: argparse.Namespace) -> dict[str, Any]:
    path = _profile_path(args)
    try:
        profile: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"no profile in {path.parent}: run `anruf login NUMBER` first") from None
    return profile


def _use_media_address(args: argparse.Namespace, server: str) -> None:
    from voice.ice import restrict_host_addresses

    address = args.media_address
    if address is None:
        host = urlsplit(server).hostname or ""
        with contextlib.suppress(ValueError):
            if host == "localhost" or ipaddress.ip_address(host).is_loopback:
                address = "127.0.0.1"
    if address:
        restrict_host_addresses([address])


async def _login(args: argparse.Namespace) -> int:
    from voice.client.signaling import SignalingClient

    client = SignalingClient(args.server)
    try:
        code = args.code
        if code is None:
            started = await client.request_code(args.number)
            print(f"A verification code was sent to {started['number']}.")
            if not sys.stdin.isatty():
                print("Run again with --code CODE.")
                return 1
            code = getpass.getpass("Code: ").strip()
        device = await client.register(args.number, code, args.name)
    finally:
        await client.close()
    path = _profile_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"server": args.server, **device}))
    path.chmod(0o600)  # the credential is a secret
    print(f"Signed in as {device['number']} (device {device['device_id']}).")
    return 0


async def _talk(call: Any, duration: float) -> None:
    """Stay in a connected call for ``duration`` seconds or until the other side hangs up."""
    with contextlib.suppress(TimeoutError):
        await call.ended(timeout=duration)
    if call.state != "ended":
        await call.hangup()
        with contextlib.suppress(TimeoutError):
            await call.ended(timeout=5)


async def _call(args: argparse.Namespace) -> int:
    from voice.client.client import Phone

    profile = _load_profile(args)
    _use_media_address(args, profile["server"])
    phone = await Phone.open(profile["server"], profile["token"])
    try:
        call = await phone.call(args.number, source=args.play, record=args.record)
        print(f"Calling {args.number} ...")
        with contextlib.suppress(TimeoutError):
            await call.ringing(timeout=15)
        if call.state == "ringing":
            print("Ringing ...")
        await call.connected(timeout=600)
        if call.state == "connected" and call.connected_at is not None:
            setup_ms = (call.connected_at - call.invited_at) * 1000
            print(f"Connected after {setup_ms:.0f} ms.")
            await _talk(call, args.duration)
        await call.ended(timeout=10)
        print(_ended_line(call))
        return 0 if call.end_reason == wire.EndReason.COMPLETED else 3
    finally:
        await phone.close()


async def _answer(args: argparse.Namespace) -> int:
    from voice.client.client import Phone

    profile = _load_profile(args)
    _use_media_address(args, profile["server"])
    phone = await Phone.open(profile["server"], profile["token"])
    try:
        print(f"Waiting for calls to {phone.number} ...")
        for index in range(args.calls):
            record = args.record
            if record is not None and args.calls > 1:
                record = record.with_name(f"{record.stem}-{index + 1}{record.suffix}")
            call = await phone.incoming(timeout=24 * 3600, source=args.play, record=record)
            print(f"Incoming call from {call.peer}; answering.")
            await call.accept()
            started = time.monotonic()
            await call.connected(timeout=30)
            if call.state == "connected":
                await _talk(call, args.duration - (time.monotonic() - started))
            await call.ended(timeout=10)
            print(_ended_line(call))
        return 0
    finally:
        await phone.close()


def _ended_line(call: Any) -> str:
    detail = f" ({call.end_detail})" if call.end_detail else ""
    return f"Call ended: {call.end_reason}{detail}."


_CLIENT_COMMANDS = {"login": _login, "call": _call, "answer": _answer}

if __name__ == "__main__":
    sys.exit(main())
