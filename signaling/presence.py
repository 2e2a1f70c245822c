"""Which devices are online, on which node, and how to reach them.

A device's WebSocket is on exactly one node; this node keeps the links it
holds and records them on the cluster bus (signaling/cluster/bus.py), so any
node can find a number's devices and send to them. Messages to a device on
another node travel over the bus and that node writes them to the socket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from signaling.cluster.bus import Bus, Message

log = logging.getLogger("anruf.presence")

#: Close code for a link replaced by a newer connection of the same device.
CLOSE_REPLACED = 4000


class DeviceLink(Protocol):
    """One open connection to a device."""

    async def send(self, text: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class Presence:
    def __init__(self, bus: Bus, alive: Callable[[str], bool]) -> None:
        self._bus = bus
        self._alive = alive
        self._links: dict[str, DeviceLink] = {}

    @property
    def node_id(self) -> str:
        return self._bus.node_id

    async def attach(self, device_id: str, number: str, link: DeviceLink) -> None:
        """Make ``link`` the device's current link; an older one (here or elsewhere) is closed."""
        previous = self._links.get(device_id)
        self._links[device_id] = link
        elsewhere = await self._bus.device_online(device_id, number)
        if previous is not None:
            await previous.close(CLOSE_REPLACED, "replaced by a newer connection")
        elif elsewhere not in (None, self.node_id) and self._alive(elsewhere):
            await self._bus.publish(
                elsewhere, {"op": "replace", "device": device_id, "node": self.node_id}
            )
        await self._bus.broadcast({"op": "device", "device": device_id, "online": True})

    async def detach(self, device_id: str, number: str, link: DeviceLink) -> bool:
        """Forget ``link`` if it is still current; False when a newer link replaced it."""
        if self._links.get(device_id) is not link:
            return False
        del self._links[device_id]
        if await self._bus.device_offline(device_id, number):
            await self._bus.broadcast({"op": "device", "device": device_id, "online": False})
        return True

    def link(self, device_id: str) -> DeviceLink | None:
        """The device's link on this node."""
        return self._links.get(device_id)

    async def online(self, device_id: str) -> bool:
        """Connected to any alive node."""
        if device_id in self._links:
            return True
        node = await self._bus.device_node(device_id)
        return node is not None and self._alive(node)

    async def devices(self, number: str) -> list[str]:
        """The number's devices connected to any alive node."""
        found = await self._bus.number_devices(number)
        return sorted(device for device, node in found.items() if self._alive(node))

    async def send(self, device_id: str, text: str) -> bool:
        """Write ``text`` to the device wherever it is connected; False if it is not."""
        link = self._links.get(device_id)
        if link is not None:
            try:
                await link.send(text)
            except (ConnectionError, RuntimeError) as exc:
                log.info("device %s: message not delivered: %s", device_id, exc)
                return False
            return True
        node = await self._bus.device_node(device_id)
        if node is None or node == self.node_id or not self._alive(node):
            return False
        await self._bus.publish(node, {"op": "send", "device": device_id, "text": text})
        return True

    async def close(self, device_id: str, code: int, reason: str, text: str = "") -> None:
        """Close the device's connection wherever it is, after sending ``text``."""
        link = self._links.get(device_id)
        if link is not None:
            if text:
                await link.send(text)
            await link.close(code, reason)
            return
        node = await self._bus.device_node(device_id)
        if node is not None and node != self.node_id and self._alive(node):
            await self._bus.publish(
                node,
                {"op": "close", "device": device_id, "code": code, "reason": reason, "text": text},
            )

    async def handle(self, message: Message) -> bool:
        """A bus message for this node's links; False if it is not one."""
        op = message.get("op")
        device = str(message.get("device", ""))
        link = self._links.get(device)
        if op == "send":
            if link is not None:
                await self.send(device, str(message.get("text", "")))
        elif op == "close":
            await self.close(
                device,
                int(message.get("code", 1000)),
                str(message.get("reason", "")),
                str(message.get("text", "")),
            )
        elif op == "replace":
            if link is not None and message.get("node") != self.node_id:
                del self._links[device]
                await link.close(CLOSE_REPLACED, "replaced by a newer connection")
        else:
            return False
        return True

    # Calls, for "busy" across nodes --------------------------------------

    async def call_started(self, call_id: str, numbers: tuple[str, ...]) -> None:
        await self._bus.call_started(call_id, numbers)

    async def call_ended(self, call_id: str, numbers: tuple[str, ...]) -> None:
        await self._bus.call_ended(call_id, numbers)

    async def call_node(self, call_id: str) -> str | None:
        """The alive node holding the call, if any."""
        node = await self._bus.call_node(call_id)
        return node if node is not None and self._alive(node) else None

    async def busy(self, number: str) -> bool:
        """On a call held by any alive node."""
        calls = await self._bus.number_calls(number)
        return any(self._alive(node) for node in calls.values())

    async def forget_node(self, node_id: str) -> None:
        """``node_id`` died: its devices and calls are no longer anywhere."""
        await self._bus.forget_node(node_id)

    def __len__(self) -> int:
        return len(self._links)

    def links(self) -> list[DeviceLink]:
        return list(self._links.values())

    def device_ids(self) -> list[str]:
        return list(self._links)

    async def forward(self, node_id: str, message: Message) -> None:
        """A message for another node's services (a device's request about its call)."""
        await self._bus.publish(node_id, message)


__all__ = ["CLOSE_REPLACED", "DeviceLink", "Presence"]
