"""Messages held for devices that are briefly away.

A device whose connection drops in a call gets ``reconnect_grace`` seconds to
come back (to this node or another). Meanwhile what its calls tell it is kept,
in order, and delivered when it is back, before anything newer: a device that
reconnects sees the call's messages as if it had never left. Ended calls of a
dead node are told the same way, held for a while for devices still reconnecting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from signaling.calls.timers import TimerHandle, Timers

__all__ = ["MAX_HELD_MESSAGES", "HeldDelivery", "Sender"]

logger = logging.getLogger("anruf.calls")

#: Messages kept for one device while its connection is down (a call's worth).
MAX_HELD_MESSAGES = 64


class Sender(Protocol):
    """Presence, as far as delivery goes."""

    async def send(self, device_id: str, text: str) -> bool:
        """Write ``text`` to the device wherever it is connected; False if it is not."""
        ...


class HeldDelivery:
    def __init__(self, sender: Sender, timers: Timers) -> None:
        self._sender = sender
        self._timers = timers
        #: Devices in their grace period: device id -> the timer that ends it.
        self._away: dict[str, TimerHandle] = {}
        #: Messages for devices whose connection dropped, delivered in order when they are back.
        self._held: dict[str, list[str]] = {}
        self._resuming: set[str] = set()

    # The grace period ------------------------------------------------------

    def is_away(self, device_id: str) -> bool:
        return device_id in self._away

    def away(self, device_id: str, grace: float, expired: Callable[[str], None]) -> None:
        """The device's connection dropped: hold its messages for ``grace`` seconds, then
        drop them and call ``expired`` (unless it came back)."""
        if device_id in self._away:
            return

        def end_of_grace() -> None:
            self._away.pop(device_id, None)
            self._held.pop(device_id, None)
            expired(device_id)

        self._away[device_id] = self._timers.call_later(grace, end_of_grace)

    def back(self, device_id: str) -> bool:
        """The device connected again: its grace period ends (True if it had one)."""
        timer = self._away.pop(device_id, None)
        if timer is None:
            return False
        timer.cancel()
        logger.info("device %s is back within the grace period", device_id)
        return True

    def holds(self, device_id: str) -> bool:
        """Messages are waiting for the device."""
        return device_id in self._held

    # Delivery --------------------------------------------------------------

    async def send(self, device_id: str, text: str) -> None:
        """Send now; if the device is away (in its grace period), keep it for later."""
        held = self._held.get(device_id)
        if held is not None:  # earlier messages are still on their way: keep the order
            if len(held) < MAX_HELD_MESSAGES:
                held.append(text)
            return
        if await self._sender.send(device_id, text):
            return
        if device_id in self._away:  # away, maybe back soon: keep it for then
            self._held[device_id] = [text]

    async def send_or_hold(self, device_id: str, text: str, hold_for: float) -> None:
        """Send, or keep ``text`` for when the device is back (for ``hold_for`` seconds)."""
        if device_id in self._held or not await self._sender.send(device_id, text):
            self._held.setdefault(device_id, []).append(text)

            def expire() -> None:
                if device_id not in self._resuming and device_id not in self._away:
                    self._held.pop(device_id, None)

            self._timers.call_later(hold_for, expire)

    async def deliver(self, device_id: str) -> bool:
        """The device is back: what it missed, in order. False if it is gone again (the
        rest is kept for its next connection) or a delivery is already under way."""
        if device_id in self._resuming:
            return False
        self._resuming.add(device_id)
        try:
            held = self._held.setdefault(device_id, [])
            while held:  # messages queued meanwhile go behind these
                if not await self._sender.send(device_id, held[0]):
                    return False  # gone again: keep them for the next connection
                held.pop(0)
            del self._held[device_id]
        finally:
            self._resuming.discard(device_id)
        return True

    def close(self) -> None:
        for timer in self._away.values():
            timer.cancel()
