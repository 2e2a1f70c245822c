"""Identities: numbers, verification codes, devices and their credentials.

A user is a phone number. A device proves it holds the number by echoing a
6-digit code sent to it, and receives a bearer token; only the token's
SHA-256 is stored. Every later request authenticates with that token.

Error statuses: a wrong or expired code is **400** (the submitted code is
bad input; 401 would imply an HTTP authentication challenge, and there is no
credential yet at that point). Exhausted attempts and the hourly send limit
are **429**; the latter carries ``retry_after``.

Test numbers (``Config.test_number_prefix`` *and* ``Config.test_code`` both
set): numbers under the prefix are sent nothing, need no prior code request,
verify with ``test_code``, and are exempt from the hourly send limit and the
attempt limit, so load tests can register the same numbers again and again.
Never configure a prefix that real subscribers can own.
"""

from __future__ import annotations

import asyncio
import logging
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from signaling.config import Config
from signaling.identity import codes
from signaling.identity.numbers import InvalidNumber
from signaling.identity.numbers import normalise as normalise_number
from signaling.identity.senders import CodeSender, ConsoleSender, make_sender
from signaling.store import identity as tables
from signaling.store.database import Connection, Database

log = logging.getLogger("anruf.identity")

#: The hourly send limit counts codes sent in this sliding window.
SEND_WINDOW = 3600.0
#: Contact discovery accepts at most this many numbers per request.
MAX_DISCOVERY_NUMBERS = 1000
#: last_seen_at is written at most this often per device, to keep
#: authentication a read in the common case.
LAST_SEEN_RESOLUTION = 60.0
MAX_DEVICE_NAME = 64
#: Tokens are 43 characters; anything much longer is not ours.
MAX_TOKEN_LENGTH = 128
#: Seconds a client should wait after the SMS gateway failed.
DELIVERY_RETRY_AFTER = 30.0
#: Stays under SQLite's host-parameter limit on old builds (999).
_IN_CHUNK = 500
#: Expired codes and sends older than SEND_WINDOW are deleted at most this often
#: (by the next code request), not one number at a time.
PRUNE_INTERVAL = 600.0


@dataclass(frozen=True)
class Device:
    device_id: str
    number: str
    name: str
    created_at: float
    last_seen_at: float | None


class IdentityError(Exception):
    """A client-caused failure, mapped one-to-one to an HTTP problem."""

    status: int = 400
    code: str = "identity_error"
    title: str = "Identity request failed"

    def __init__(self, detail: str = "", *, retry_after: float | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.retry_after = retry_after
        #: Further machine-readable members for the problem document.
        self.extra = extra


class InvalidNumberError(IdentityError):
    status = 400
    code = "invalid_number"
    title = "Invalid phone number"

    def __init__(self, error: InvalidNumber) -> None:
        super().__init__(error.message, reason=error.reason)
        self.reason = error.reason


class CodeExpired(IdentityError):
    status = 400
    code = "code_expired"
    title = "Verification code expired"


class WrongCode(IdentityError):
    status = 400
    code = "wrong_code"
    title = "Wrong verification code"


class TooManyAttempts(IdentityError):
    status = 429
    code = "too_many_attempts"
    title = "Too many wrong codes"


class TooManySends(IdentityError):
    status = 429
    code = "too_many_sends"
    title = "Too many codes requested"


class CodeDeliveryFailed(IdentityError):
    status = 503
    code = "code_delivery_failed"
    title = "The verification code could not be sent"


class TooManyNumbers(IdentityError):
    status = 400
    code = "too_many_numbers"
    title = "Too many numbers"


class DeviceNotFound(IdentityError):
    status = 404
    code = "device_not_found"
    title = "No such device"


class RegistrationHook(Protocol):
    async def device_added(self, conn: Any, device: Device, other_devices: int) -> bool:
        """In the registration's transaction; ``other_devices`` were active before.
        True if it wrote something that ``committed()`` must announce."""

    def committed(self) -> None:
        """After a registration for which ``device_added`` returned True was committed."""


class IdentityService:
    def __init__(
        self,
        db: Database,
        config: Config,
        sender: CodeSender,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._config = config
        self._sender = sender
        self._clock = clock
        self._listeners: list[Callable[[Device], None]] = []
        self._registration_hooks: list[RegistrationHook] = []
        self._pruned_at = float("-inf")
        tables.check_dialect(db.engine.dialect.name)

    def add_registration_hook(self, hook: RegistrationHook) -> None:
        """``hook`` writes in each registration's transaction (the operator's
        subscriber.verified event) and hears when it was committed."""
        self._registration_hooks.append(hook)

    # -- numbers -----------------------------------------------------------

    def normalise(self, raw: str, region: str | None = None) -> str:
        """``raw`` as E.164, national formats read in ``region`` or the default."""
        try:
            return normalise_number(raw, region or self._config.default_region)
        except InvalidNumber as exc:
            raise InvalidNumberError(exc) from exc

    def is_test_number(self, number: str) -> bool:
        prefix = self._config.test_number_prefix
        return bool(prefix and self._config.test_code and number.startswith(prefix))

    # -- registration ------------------------------------------------------

    async def request_code(self, raw_number: str, region: str | None = None) -> tuple[str, float]:
        """Send a fresh code to the number; returns (E.164, seconds until it expires).

        A new code replaces any outstanding one (and its attempt count).
        """
        number = self.normalise(raw_number, region)
        ttl = self._config.code_ttl
        if self.is_test_number(number):
            return number, ttl
        now = self._clock()
        if now - self._pruned_at >= PRUNE_INTERVAL:
            self._pruned_at = now
            await self.prune()
        code = codes.generate_code()
        limit = self._config.code_sends_per_hour
        window_start = now - SEND_WINDOW
        too_many: TooManySends | None = None
        async with self._db.transaction() as conn:
            # One statement counts the number's sends in the window and, if that is
            # under the limit, records this one.
            if await tables.record_send(conn, number, now, window_start, limit):
                await tables.store_code(
                    conn,
                    number,
                    codes.hash_code(code),
                    now,
                    now + ttl,
                    self._config.code_attempts,
                )
            else:
                sent = await tables.sends_since(conn, number, window_start)
                # The window frees a slot when the oldest counted send ages out.
                oldest = sent[len(sent) - limit] if 0 < limit <= len(sent) else now
                retry_after = max(1.0, oldest + SEND_WINDOW - now)
                too_many = TooManySends(
                    f"at most {limit} codes per hour may be sent to a number",
                    retry_after=retry_after,
                )
        if too_many is not None:
            raise too_many
        try:
            await self._sender.send(number, code)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("sending a verification code to %s failed", number)
            raise CodeDeliveryFailed(
                "the SMS gateway did not accept the message; try again later",
                retry_after=DELIVERY_RETRY_AFTER,
            ) from exc
        return number, ttl

    async def verify(
        self, raw_number: str, code: str, device_name: str = "", region: str | None = None
    ) -> tuple[Device, str]:
        """Check ``code`` and register a new device; returns it with its token.

        The token is returned only here and never stored in clear.
        """
        number = self.normalise(raw_number, region)
        name = _clean_name(device_name)
        if self.is_test_number(number):
            if not codes.codes_equal(code, self._config.test_code):
                raise WrongCode("the code is not correct")
            async with self._db.transaction() as conn:
                device, token, announce = await self._add_device(conn, number, name)
            if announce:
                self._registration_committed()
            return device, token
        now = self._clock()
        error: IdentityError | None = None
        result: tuple[Device, str, bool] | None = None
        async with self._db.transaction() as conn:
            # Spend an attempt and read the code in one conditional statement, so
            # concurrent guesses on several nodes cannot exceed the allowance.
            spent = await tables.spend_attempt(conn, number, now)
            if spent is None:
                error = await self._no_attempt_left(conn, number, now)
            elif codes.verify_code(code, spent.code_hash):
                await tables.delete_code(conn, number)
                result = await self._add_device(conn, number, name)
            elif spent.attempts_left <= 0:
                error = TooManyAttempts("too many wrong codes; request a new one")
            else:
                left = spent.attempts_left
                error = WrongCode(
                    f"the code is not correct; {left} attempt(s) left", attempts_left=left
                )
        # Raised after the commit: a wrong guess must still use up an attempt.
        if error is not None:
            raise error
        assert result is not None
        device, token, announce = result
        if announce:
            self._registration_committed()
        return device, token

    def _registration_committed(self) -> None:
        for hook in self._registration_hooks:
            hook.committed()

    async def _no_attempt_left(self, conn: Connection, number: str, now: float) -> IdentityError:
        """Why no attempt could be spent: no code, an expired one (deleted), or none left."""
        expires_at = await tables.code_expiry(conn, number)
        if expires_at is None:
            return CodeExpired("no code is pending for this number; request a new one")
        if expires_at <= now:
            await tables.delete_code(conn, number)
            return CodeExpired("the code has expired; request a new one")
        return TooManyAttempts("too many wrong codes; request a new one")

    async def _add_device(
        self, conn: Connection, number: str, name: str
    ) -> tuple[Device, str, bool]:
        """The new device, its token, and whether a hook has something to announce."""
        token = codes.generate_token()
        device = Device(
            device_id=codes.generate_device_id(),
            number=number,
            name=name,
            created_at=self._clock(),
            last_seen_at=None,
        )
        previous = await tables.insert_device(
            conn,
            device_id=device.device_id,
            number=number,
            name=name,
            token_hash=codes.hash_token(token),
            created_at=device.created_at,
        )
        announce = False
        for hook in self._registration_hooks:
            announce |= await hook.device_added(conn, device, previous)
        log.info("device %s registered for %s", device.device_id, number)
        return device, token, announce

    # -- devices -----------------------------------------------------------

    async def authenticate(self, token: str) -> Device | None:
        """The device holding ``token``; None if unknown or revoked."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        token_hash = codes.hash_token(token)
        async with self._db.read() as conn:
            row = await tables.device_by_token(conn, token_hash)
        if row is None:
            return None
        device = _device(row)
        now = self._clock()
        if device.last_seen_at is None or now - device.last_seen_at >= LAST_SEEN_RESOLUTION:
            async with self._db.transaction() as conn:
                await tables.set_last_seen(conn, device.device_id, now)
            device = Device(device.device_id, device.number, device.name, device.created_at, now)
        return device

    async def list_devices(self, number: str) -> list[Device]:
        """The number's devices that are not revoked, oldest first."""
        async with self._db.read() as conn:
            rows = await tables.devices_of(conn, number)
        return [_device(row) for row in rows]

    async def revoke(self, number: str, device_id: str) -> Device:
        """Revoke one of ``number``'s own devices; its token stops working at once."""
        async with self._db.transaction() as conn:
            row = await tables.device_of(conn, number, device_id)
            if row is not None:
                await tables.set_revoked(conn, device_id, self._clock())
        if row is None:
            # Someone else's device looks the same as a missing one.
            raise DeviceNotFound(f"no active device {device_id!r} for this number")
        device = _device(row)
        log.info("device %s of %s revoked", device.device_id, device.number)
        for listener in list(self._listeners):
            try:
                listener(device)
            except Exception:
                log.exception("revocation listener failed for %s", device.device_id)
        return device

    def on_revoked(self, listener: Callable[[Device], None]) -> None:
        """Call ``listener(device)`` after each revocation (e.g. to close its WebSocket)."""
        self._listeners.append(listener)

    # -- discovery ---------------------------------------------------------

    async def discover(self, raw_numbers: list[str], region: str | None = None) -> list[str]:
        """Those of ``raw_numbers`` that are registered, as E.164, in input order.

        Entries that are not valid numbers are ignored.
        """
        if len(raw_numbers) > MAX_DISCOVERY_NUMBERS:
            raise TooManyNumbers(
                f"at most {MAX_DISCOVERY_NUMBERS} numbers per request, got {len(raw_numbers)}"
            )
        wanted: dict[str, None] = {}
        region = region or self._config.default_region
        for raw in raw_numbers:
            try:
                wanted[normalise_number(raw, region)] = None
            except InvalidNumber:
                continue
        found = await self._registered(wanted)
        return [number for number in wanted if number in found]

    async def is_registered(self, number: str) -> bool:
        return number in await self._registered([number])

    async def _registered(self, numbers: Iterable[str]) -> set[str]:
        pending = list(numbers)
        found: set[str] = set()
        async with self._db.read() as conn:
            for start in range(0, len(pending), _IN_CHUNK):
                chunk = pending[start : start + _IN_CHUNK]
                found |= await tables.registered(conn, chunk)
        return found

    # -- housekeeping ------------------------------------------------------

    async def prune(self) -> None:
        """Delete expired codes and send records that no longer count."""
        now = self._clock()
        async with self._db.transaction() as conn:
            await tables.prune(conn, now, SEND_WINDOW)


def _device(row: Any) -> Device:
    return Device(
        device_id=row.device_id,
        number=row.number,
        name=row.name,
        created_at=row.created_at,
        last_seen_at=row.last_seen_at,
    )


def _clean_name(name: str) -> str:
    """Printable text only, trimmed to the column width."""
    printable = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    return printable.strip()[:MAX_DEVICE_NAME]


__all__ = [
    "CodeDeliveryFailed",
    "CodeExpired",
    "CodeSender",
    "ConsoleSender",
    "Device",
    "DeviceNotFound",
    "IdentityError",
    "IdentityService",
    "InvalidNumberError",
    "TooManyAttempts",
    "TooManyNumbers",
    "TooManySends",
    "WrongCode",
    "make_sender",
]
