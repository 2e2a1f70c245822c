"""Devices: several per number, own credentials, listing, revocation."""

from __future__ import annotations

from pathlib import Path

import pytest

from signaling.config import Config
from signaling.identity.senders import RecordingSender
from signaling.identity.service import Device, DeviceNotFound, IdentityService
from signaling.store.database import Database
from tests.unit.conftest import Clock

ALICE = "+4917700000001"
BOB = "+4917700000002"


@pytest.fixture
def identity(db: Database, sender: RecordingSender, clock: Clock) -> IdentityService:
    return IdentityService(db, Config(), sender, clock=clock)


async def register(
    identity: IdentityService, sender: RecordingSender, number: str, name: str = ""
) -> tuple[Device, str]:
    await identity.request_code(number)
    return await identity.verify(number, sender.last_code(number), name)


async def test_several_devices_per_number(
    identity: IdentityService, sender: RecordingSender, clock: Clock
) -> None:
    phone, phone_token = await register(identity, sender, ALICE, "Phone")
    clock.now += 1
    laptop, laptop_token = await register(identity, sender, ALICE, "Laptop")
    await register(identity, sender, BOB, "Bob's phone")
    assert phone_token != laptop_token
    assert phone.device_id != laptop.device_id
    listed = await identity.list_devices(ALICE)
    assert [d.device_id for d in listed] == [phone.device_id, laptop.device_id]
    assert [d.name for d in listed] == ["Phone", "Laptop"]
    authed = await identity.authenticate(laptop_token)
    assert authed is not None and authed.device_id == laptop.device_id


async def test_revocation_is_immediate_and_notifies(
    identity: IdentityService, sender: RecordingSender
) -> None:
    revoked: list[Device] = []
    identity.on_revoked(revoked.append)
    phone, phone_token = await register(identity, sender, ALICE, "Phone")
    laptop, laptop_token = await register(identity, sender, ALICE, "Laptop")
    result = await identity.revoke(ALICE, phone.device_id)
    assert result.device_id == phone.device_id
    assert [d.device_id for d in revoked] == [phone.device_id]
    assert await identity.authenticate(phone_token) is None
    assert await identity.authenticate(laptop_token) is not None
    assert [d.device_id for d in await identity.list_devices(ALICE)] == [laptop.device_id]
    with pytest.raises(DeviceNotFound):
        await identity.revoke(ALICE, phone.device_id)  # already revoked


async def test_cannot_revoke_another_numbers_device(
    identity: IdentityService, sender: RecordingSender
) -> None:
    bobs, bob_token = await register(identity, sender, BOB)
    await register(identity, sender, ALICE)
    with pytest.raises(DeviceNotFound) as info:
        await identity.revoke(ALICE, bobs.device_id)
    assert info.value.status == 404
    assert await identity.authenticate(bob_token) is not None


async def test_failing_listener_does_not_block_revocation(
    identity: IdentityService, sender: RecordingSender
) -> None:
    def broken(device: Device) -> None:
        raise RuntimeError("listener bug")

    seen: list[str] = []
    identity.on_revoked(broken)
    identity.on_revoked(lambda d: seen.append(d.device_id))
    device, token = await register(identity, sender, ALICE)
    await identity.revoke(ALICE, device.device_id)
    assert seen == [device.device_id]
    assert await identity.authenticate(token) is None


async def test_unknown_tokens(identity: IdentityService) -> None:
    assert await identity.authenticate("") is None
    assert await identity.authenticate("not-a-token") is None
    assert await identity.authenticate("x" * 10_000) is None


async def test_last_seen_is_updated_coarsely(
    identity: IdentityService, sender: RecordingSender, clock: Clock
) -> None:
    device, token = await register(identity, sender, ALICE)
    assert device.last_seen_at is None
    first = await identity.authenticate(token)
    assert first is not None and first.last_seen_at == clock.now
    clock.now += 10
    again = await identity.authenticate(token)
    assert again is not None and again.last_seen_at == first.last_seen_at
    clock.now += 60
    later = await identity.authenticate(token)
    assert later is not None and later.last_seen_at == clock.now


async def test_token_is_never_stored(
    identity: IdentityService, sender: RecordingSender, db: Database, db_path: Path
) -> None:
    _, token = await register(identity, sender, ALICE)
    await db.close()  # checkpoint and flush everything to the files
    stored = b"".join(
        p.read_bytes() for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)
    )
    assert token.encode() not in stored
    assert ALICE.encode() in stored  # the check does see the database contents


async def test_devices_survive_restart(
    db_path: Path, sender: RecordingSender, clock: Clock
) -> None:
    url = f"sqlite+aiosqlite:///{db_path}"
    db = await Database.open(url)
    device, token = await register(
        IdentityService(db, Config(), sender, clock=clock), sender, ALICE
    )
    await db.close()
    db = await Database.open(url)
    try:
        identity = IdentityService(db, Config(), sender, clock=clock)
        authed = await identity.authenticate(token)
        assert authed is not None and authed.device_id == device.device_id
        assert await identity.is_registered(ALICE)
    finally:
        await db.close()


async def test_device_names_are_cleaned(identity: IdentityService, sender: RecordingSender) -> None:
    device, _ = await register(identity, sender, ALICE, "  Phone\x00\n" + "x" * 100)
    assert device.name.startswith("Phone") and len(device.name) == 64
    assert "\x00" not in device.name
