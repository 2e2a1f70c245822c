"""Contact discovery: which of a phone book's numbers use Anruf."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from signaling.config import Config
from signaling.identity.senders import RecordingSender
from signaling.identity.service import IdentityService, TooManyNumbers
from signaling.store.database import Database

ALICE = "+4917700000001"
BOB = "+4917700000002"
CAROL = "+12025550143"


@pytest.fixture
async def identity(tmp_path: Path) -> AsyncIterator[IdentityService]:
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'anruf.sqlite3'}")
    sender = RecordingSender()
    service = IdentityService(db, Config(default_region="DE"), sender)
    for number in (ALICE, BOB, CAROL):
        await service.request_code(number)
        await service.verify(number, sender.last_code(number))
    yield service
    await db.close()


async def test_mixed_formats(identity: IdentityService) -> None:
    found = await identity.discover(
        [
            "0177 0000 0002",  # BOB, national
            "+49 177 0000 0001",  # ALICE, international with spaces
            "+4917700000001",  # ALICE again
            "+1 (202) 555-0143",  # CAROL
            "+4917700000009",  # valid, not registered
            "not a number",
            "",
            "110",
        ]
    )
    assert found == [BOB, ALICE, CAROL]


async def test_region_for_national_formats(identity: IdentityService) -> None:
    assert await identity.discover(["(202) 555-0143", "0177 0000 0001"], region="US") == [CAROL]


async def test_revoked_numbers_are_not_found(identity: IdentityService) -> None:
    for device in await identity.list_devices(BOB):
        await identity.revoke(BOB, device.device_id)
    assert await identity.discover([BOB, ALICE]) == [ALICE]
    assert not await identity.is_registered(BOB)
    assert await identity.is_registered(ALICE)


async def test_thousand_numbers(identity: IdentityService) -> None:
    book = [f"+49177000{i:05d}" for i in range(1000)]
    assert await identity.discover(book) == [ALICE, BOB]
    with pytest.raises(TooManyNumbers) as info:
        await identity.discover([*book, CAROL])
    assert info.value.status == 400


async def test_empty(identity: IdentityService) -> None:
    assert await identity.discover([]) == []
