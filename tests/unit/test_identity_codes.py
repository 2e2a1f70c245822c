"""Verification codes: hashing helpers, expiry, attempts, hourly sends, test numbers."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

from signaling.config import Config
from signaling.identity import codes
from signaling.identity.senders import ConsoleSender, RecordingSender, make_sender
from signaling.identity.service import (
    CodeDeliveryFailed,
    CodeExpired,
    IdentityService,
    InvalidNumberError,
    TooManyAttempts,
    TooManySends,
    WrongCode,
)
from signaling.store.database import Database
from signaling.store.schema import verifications
from tests.unit.conftest import Clock

ALICE = "+4917700000001"
TEST_NUMBER = "+4917799999901"


@pytest.fixture
def config() -> Config:
    return Config(
        code_ttl=300.0,
        code_attempts=3,
        code_sends_per_hour=2,
        test_number_prefix="+49177999999",
        test_code="123456",
    )


@pytest.fixture
def identity(
    db: Database, config: Config, sender: RecordingSender, clock: Clock
) -> IdentityService:
    return IdentityService(db, config, sender, clock=clock)


# -- pure helpers ----------------------------------------------------------


def test_codes_are_six_digits_and_vary() -> None:
    generated = {codes.generate_code() for _ in range(200)}
    assert all(len(c) == 6 and c.isdigit() for c in generated)
    assert len(generated) > 150


def test_code_hash_is_salted_and_verifies() -> None:
    first, second = codes.hash_code("012345"), codes.hash_code("012345")
    assert first != second
    assert "012345" not in first
    assert codes.verify_code("012345", first)
    assert codes.verify_code("012345", second)
    assert not codes.verify_code("012346", first)
    assert not codes.verify_code("012345", "garbage")
    assert not codes.verify_code("012345", "md5$00$00")


def test_tokens_have_256_bits_and_hash_to_sha256() -> None:
    token = codes.generate_token()
    assert len(token) >= 43
    assert token != codes.generate_token()
    assert len(codes.hash_token(token)) == 64
    assert codes.hash_token(token) == codes.hash_token(token)


# -- the verification flow -------------------------------------------------


async def test_request_and_verify(identity: IdentityService, sender: RecordingSender) -> None:
    number, expires_in = await identity.request_code("0177 0000 0001", "DE")
    assert (number, expires_in) == (ALICE, 300.0)
    device, token = await identity.verify(ALICE, sender.last_code(ALICE), "Pixel")
    assert device.number == ALICE and device.name == "Pixel"
    assert await identity.authenticate(token) == device.__class__(
        device.device_id, ALICE, "Pixel", device.created_at, device.created_at
    )
    # A code works once.
    with pytest.raises(CodeExpired):
        await identity.verify(ALICE, sender.last_code(ALICE))


async def test_codes_are_stored_hashed(
    identity: IdentityService, sender: RecordingSender, db: Database
) -> None:
    await identity.request_code(ALICE)
    async with db.read() as conn:
        stored = (await conn.execute(sa.select(verifications.c.code_hash))).scalar_one()
    assert sender.last_code(ALICE) not in stored


async def test_code_expires(
    identity: IdentityService, sender: RecordingSender, clock: Clock
) -> None:
    await identity.request_code(ALICE)
    clock.now += 300.0
    with pytest.raises(CodeExpired) as info:
        await identity.verify(ALICE, sender.last_code(ALICE))
    assert info.value.status == 400


async def test_code_valid_until_just_before_expiry(
    identity: IdentityService, sender: RecordingSender, clock: Clock
) -> None:
    await identity.request_code(ALICE)
    clock.now += 299.0
    device, _ = await identity.verify(ALICE, sender.last_code(ALICE))
    assert device.number == ALICE


async def test_verify_without_request(identity: IdentityService) -> None:
    with pytest.raises(CodeExpired):
        await identity.verify(ALICE, "000000")


async def test_attempts_are_limited(identity: IdentityService, sender: RecordingSender) -> None:
    await identity.request_code(ALICE)
    right = sender.last_code(ALICE)
    wrong = "000000" if right != "000000" else "111111"
    with pytest.raises(WrongCode) as first:
        await identity.verify(ALICE, wrong)
    assert first.value.extra["attempts_left"] == 2
    with pytest.raises(WrongCode):
        await identity.verify(ALICE, wrong)
    with pytest.raises(TooManyAttempts) as third:
        await identity.verify(ALICE, wrong)
    assert third.value.status == 429
    # Even the right code is refused now; a new code restores the attempts.
    with pytest.raises(TooManyAttempts):
        await identity.verify(ALICE, right)
    await identity.request_code(ALICE)
    device, _ = await identity.verify(ALICE, sender.last_code(ALICE))
    assert device.number == ALICE


async def test_new_code_replaces_old(identity: IdentityService, sender: RecordingSender) -> None:
    await identity.request_code(ALICE)
    old = sender.last_code(ALICE)
    await identity.request_code(ALICE)
    new = sender.last_code(ALICE)
    if old != new:
        with pytest.raises(WrongCode):
            await identity.verify(ALICE, old)
    device, _ = await identity.verify(ALICE, new)
    assert device.number == ALICE


async def test_sends_per_hour_are_limited(
    identity: IdentityService, sender: RecordingSender, clock: Clock
) -> None:
    await identity.request_code(ALICE)
    clock.now += 600.0
    await identity.request_code(ALICE)
    clock.now += 600.0
    with pytest.raises(TooManySends) as info:
        await identity.request_code(ALICE)
    assert info.value.status == 429
    # The first send ages out of the window 3600 s after it was made.
    assert info.value.retry_after == pytest.approx(2400.0)
    assert len(sender.sent) == 2
    # Other numbers are not affected.
    await identity.request_code("+4917700000002")
    clock.now += 2400.0
    await identity.request_code(ALICE)
    assert len(sender.sent) == 4


async def test_send_limit_survives_restart(
    tmp_path: Path, config: Config, sender: RecordingSender, clock: Clock
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'restart.sqlite3'}"
    db = await Database.open(url)
    service = IdentityService(db, config, sender, clock=clock)
    await service.request_code(ALICE)
    await service.request_code(ALICE)
    await db.close()
    db = await Database.open(url)
    try:
        service = IdentityService(db, config, sender, clock=clock)
        with pytest.raises(TooManySends):
            await service.request_code(ALICE)
        device, _ = await service.verify(ALICE, sender.last_code(ALICE))
        assert device.number == ALICE
    finally:
        await db.close()


async def test_test_numbers_send_nothing_and_skip_limits(
    identity: IdentityService, sender: RecordingSender
) -> None:
    for _ in range(5):  # beyond code_sends_per_hour
        number, _ = await identity.request_code(TEST_NUMBER)
        assert number == TEST_NUMBER
    assert sender.sent == []
    for _ in range(5):  # wrong codes do not lock a test number
        with pytest.raises(WrongCode):
            await identity.verify(TEST_NUMBER, "654321")
    first, _ = await identity.verify(TEST_NUMBER, "123456")
    second, _ = await identity.verify(TEST_NUMBER, "123456")
    assert first.device_id != second.device_id


async def test_test_numbers_off_without_prefix(
    db: Database, sender: RecordingSender, clock: Clock
) -> None:
    service = IdentityService(db, Config(test_code="123456"), sender, clock=clock)
    await service.request_code(TEST_NUMBER)
    assert sender.sent and sender.sent[0][0] == TEST_NUMBER
    with pytest.raises(WrongCode):
        await service.verify(TEST_NUMBER, "123456" if sender.sent[0][1] != "123456" else "0")


async def test_invalid_number_is_rejected(identity: IdentityService) -> None:
    with pytest.raises(InvalidNumberError) as info:
        await identity.request_code("0900 1234567")
    assert info.value.status == 400
    assert info.value.reason == "not_callable"


async def test_delivery_failure_is_reported(db: Database, config: Config, clock: Clock) -> None:
    class Broken:
        async def send(self, number: str, code: str) -> None:
            raise ConnectionError("gateway down")

    service = IdentityService(db, config, Broken(), clock=clock)
    with pytest.raises(CodeDeliveryFailed) as info:
        await service.request_code(ALICE)
    assert info.value.status == 503 and info.value.retry_after


async def test_console_sender_logs(caplog: pytest.LogCaptureFixture) -> None:
    sender = make_sender("console")
    assert isinstance(sender, ConsoleSender)
    with caplog.at_level(logging.INFO, logger="anruf.sms"):
        await sender.send(ALICE, "424242")
    assert any("424242" in r.getMessage() and r.name == "anruf.sms" for r in caplog.records)
    with pytest.raises(ValueError):
        make_sender("carrier-pigeon")


async def test_concurrent_requests_respect_the_send_limit(
    identity: IdentityService, sender: RecordingSender
) -> None:
    results = await asyncio.gather(
        *(identity.request_code(ALICE) for _ in range(10)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 2
    assert all(isinstance(r, TooManySends) for r in results if isinstance(r, BaseException))
    assert len(sender.sent) == 2


async def test_concurrent_guesses_respect_the_attempt_limit(
    identity: IdentityService, sender: RecordingSender
) -> None:
    await identity.request_code(ALICE)
    right = sender.last_code(ALICE)
    guesses = [f"{(int(right) + i) % 1_000_000:06d}" for i in range(1, 11)]
    results = await asyncio.gather(
        *(identity.verify(ALICE, g) for g in guesses), return_exceptions=True
    )
    assert sum(isinstance(r, WrongCode) for r in results) == 2
    assert sum(isinstance(r, TooManyAttempts) for r in results) == 8
