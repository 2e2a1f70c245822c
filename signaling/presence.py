"""Which devices are online, and the link to reach each (in-process)."""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol


class DeviceLink(Protocol):
    """One open connection to a device."""

    async def send(self, text: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class Presence:
    def __init__(self) -> None:
        self._links: dict[str, DeviceLink] = {}
        self._numbers: dict[str, set[str]] = defaultdict(set)

    def attach(self, device_id: str, number: str, link: DeviceLink) -> DeviceLink | None:
        """Make ``link`` the device's current link; returns the link it replaces."""
        previous = self._links.get(device_id)
        self._links[device_id] = link
        self._numbers[number].add(device_id)
        return previous

    def detach(self, device_id: str, number: str, link: DeviceLink) -> bool:
        """Forget ``link`` if it is still current; False when a newer link replaced it."""
        if self._links.get(device_id) is not link:
            return False
        del self._links[device_id]
        devices = self._numbers.get(number)
        if devices is not None:
            devices.discard(device_id)
            if not devices:
                del self._numbers[number]
        return True

    def link(self, device_id: str) -> DeviceLink | None:
        return self._links.get(device_id)

    def devices(self, number: str) -> list[str]:
        return sorted(self._numbers.get(number, ()))

    def __len__(self) -> int:
        return len(self._links)

    def links(self) -> list[DeviceLink]:
        return list(self._links.values())
