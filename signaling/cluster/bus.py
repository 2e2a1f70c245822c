"""The cluster bus: where each device is connected, which node holds each call,
and messages between nodes.

`LocalBus` is the embedded default (one node, nothing leaves the process).
`RedisBus` lets several signaling nodes share one Redis:

- ``anruf:dev:<device>`` -> node id: the node holding the device's WebSocket.
- ``anruf:num:<number>`` (hash device -> node): a number's connected devices.
- ``anruf:call:<call id>`` -> node id: the node holding the call (its state
  machine and media legs).
- ``anruf:busy:<number>`` (hash call id -> node): the calls a number is on.
- ``anruf:owned:<node>`` (set): the keys above a node wrote, so a surviving node
  can remove them when the node dies (`forget_node`).
- Pub/sub channel ``anruf:node:<node>`` carries messages to one node and
  ``anruf:all`` to every node. Pub/sub delivers at most once, in the order one
  connection published; a node that is down misses what was sent meanwhile
  (its devices reconnect elsewhere and calls re-route by the registry).

Liveness is not the bus's business: entries of a dead node stay until a
survivor forgets them, and readers filter by the nodes they know are alive
(signaling/cluster/node.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

log = logging.getLogger("anruf.cluster")

Message = dict[str, Any]
Handler = Callable[[Message], Coroutine[Any, Any, None]]

PREFIX = "anruf:"
ALL_NODES = PREFIX + "all"


class Bus(Protocol):
    node_id: str

    async def start(self, handler: Handler) -> None:
        """Deliver messages for this node (and to every node) to ``handler``."""

    async def close(self) -> None: ...

    async def publish(self, node_id: str, message: Message) -> None:
        """Send ``message`` to one node."""

    async def broadcast(self, message: Message) -> None:
        """Send ``message`` to every node, this one included."""

    async def device_online(self, device_id: str, number: str) -> str | None:
        """Record that this node holds the device; returns the node that held it before."""

    async def device_offline(self, device_id: str, number: str) -> bool:
        """Forget the device if this node still holds it; False when another node does."""

    async def device_node(self, device_id: str) -> str | None: ...

    async def number_devices(self, number: str) -> dict[str, str]:
        """The number's connected devices: device id -> node id."""

    async def call_started(self, call_id: str, numbers: tuple[str, ...]) -> None: ...

    async def call_ended(self, call_id: str, numbers: tuple[str, ...]) -> None: ...

    async def call_node(self, call_id: str) -> str | None: ...

    async def number_calls(self, number: str) -> dict[str, str]:
        """The calls ``number`` is on: call id -> node id."""

    async def forget_node(self, node_id: str) -> None:
        """Remove every entry ``node_id`` wrote (it died)."""


class LocalBus:
    """One node: the registry is a few dicts and messages go straight to the handler."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._handler: Handler | None = None
        self._devices: dict[str, str] = {}
        self._numbers: dict[str, dict[str, str]] = {}
        self._calls: dict[str, str] = {}
        self._busy: dict[str, dict[str, str]] = {}

    async def start(self, handler: Handler) -> None:
        self._handler = handler

    async def close(self) -> None:
        self._handler = None

    async def publish(self, node_id: str, message: Message) -> None:
        if node_id == self.node_id:
            await self.broadcast(message)

    async def broadcast(self, message: Message) -> None:
        if self._handler is not None:
            await self._handler(message)

    async def device_online(self, device_id: str, number: str) -> str | None:
        previous = self._devices.get(device_id)
        self._devices[device_id] = self.node_id
        self._numbers.setdefault(number, {})[device_id] = self.node_id
        return previous

    async def device_offline(self, device_id: str, number: str) -> bool:
        if self._devices.get(device_id) != self.node_id:
            return False
        del self._devices[device_id]
        _discard(self._numbers, number, device_id)
        return True

    async def device_node(self, device_id: str) -> str | None:
        return self._devices.get(device_id)

    async def number_devices(self, number: str) -> dict[str, str]:
        return dict(self._numbers.get(number, {}))

    async def call_started(self, call_id: str, numbers: tuple[str, ...]) -> None:
        self._calls[call_id] = self.node_id
        for number in numbers:
            self._busy.setdefault(number, {})[call_id] = self.node_id

    async def call_ended(self, call_id: str, numbers: tuple[str, ...]) -> None:
        self._calls.pop(call_id, None)
        for number in numbers:
            _discard(self._busy, number, call_id)

    async def call_node(self, call_id: str) -> str | None:
        return self._calls.get(call_id)

    async def number_calls(self, number: str) -> dict[str, str]:
        return dict(self._busy.get(number, {}))

    async def forget_node(self, node_id: str) -> None:
        """Nothing to forget: one node's registry lives and dies with it."""


def _discard(table: dict[str, dict[str, str]], key: str, member: str) -> None:
    entries = table.get(key)
    if entries is not None:
        entries.pop(member, None)
        if not entries:
            del table[key]


# Deletes the device's entries only while they still name this node (a newer
# connection on another node must not be undone by this one's late close).
_DEVICE_OFFLINE = """
redis.call('SREM', KEYS[3], ARGV[3])
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[2]) end
return 1
"""

# Removes a dead node's entries, each only if it still names that node.
_FORGET_NODE = """
local owned = redis.call('SMEMBERS', KEYS[1])
for _, entry in ipairs(owned) do
  local kind, a, b = string.match(entry, '^(%a+)|([^|]*)|?(.*)$')
  if kind == 'dev' then
    if redis.call('GET', 'anruf:dev:' .. a) == ARGV[1] then redis.call('DEL', 'anruf:dev:' .. a) end
    if redis.call('HGET', 'anruf:num:' .. b, a) == ARGV[1] then
      redis.call('HDEL', 'anruf:num:' .. b, a)
    end
  elseif kind == 'call' then
    if redis.call('GET', 'anruf:call:' .. a) == ARGV[1] then
      redis.call('DEL', 'anruf:call:' .. a)
    end
  elseif kind == 'busy' then
    redis.call('HDEL', 'anruf:busy:' .. b, a)
  end
end
redis.call('DEL', KEYS[1])
return #owned
"""


class RedisBus:
    """Several nodes sharing one Redis (redis.asyncio)."""

    def __init__(self, node_id: str, url: str) -> None:
        import redis.asyncio as redis

        self.node_id = node_id
        self._redis = redis.Redis.from_url(url, decode_responses=True, health_check_interval=10)
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._handler: Handler | None = None
        self._owned = f"{PREFIX}owned:{node_id}"
        self._offline = self._redis.register_script(_DEVICE_OFFLINE)
        self._forget = self._redis.register_script(_FORGET_NODE)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, handler: Handler) -> None:
        self._handler = handler
        await self._redis.ping()  # fail at startup, not on the first call
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(ALL_NODES, _channel(self.node_id))
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for task in list(self._tasks):
            task.cancel()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        await self._redis.aclose()

    async def _read(self) -> None:
        while True:
            try:
                async for raw in self._pubsub.listen():
                    self._dispatch(raw)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restarted or the connection dropped
                log.warning("cluster bus: subscription lost (%s); resubscribing", exc)
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    await self._pubsub.subscribe(ALL_NODES, _channel(self.node_id))

    def _dispatch(self, raw: dict[str, Any]) -> None:
        if raw.get("type") != "message" or self._handler is None:
            return
        try:
            message = json.loads(raw["data"])
        except (TypeError, ValueError):
            log.warning("cluster bus: unreadable message on %s", raw.get("channel"))
            return
        if not isinstance(message, dict):
            return
        # Each message in its own task, so a slow one (a call's lock) does not hold
        # up the others; messages about one device are sent in order by one node.
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(self._handler(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def publish(self, node_id: str, message: Message) -> None:
        await self._redis.publish(_channel(node_id), json.dumps(message))

    async def broadcast(self, message: Message) -> None:
        await self._redis.publish(ALL_NODES, json.dumps(message))

    async def device_online(self, device_id: str, number: str) -> str | None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.getset(PREFIX + "dev:" + device_id, self.node_id)
            pipe.hset(PREFIX + "num:" + number, device_id, self.node_id)
            pipe.sadd(self._owned, f"dev|{device_id}|{number}")
            previous, _, _ = await pipe.execute()
        return str(previous) if previous else None

    async def device_offline(self, device_id: str, number: str) -> bool:
        done = await self._offline(
            keys=[PREFIX + "dev:" + device_id, PREFIX + "num:" + number, self._owned],
            args=[self.node_id, device_id, f"dev|{device_id}|{number}"],
        )
        return bool(done)

    async def device_node(self, device_id: str) -> str | None:
        node = await self._redis.get(PREFIX + "dev:" + device_id)
        return str(node) if node else None

    async def number_devices(self, number: str) -> dict[str, str]:
        return _strings(await self._redis.hgetall(PREFIX + "num:" + number))

    async def call_started(self, call_id: str, numbers: tuple[str, ...]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(PREFIX + "call:" + call_id, self.node_id)
            pipe.sadd(self._owned, f"call|{call_id}")
            for number in numbers:
                pipe.hset(PREFIX + "busy:" + number, call_id, self.node_id)
                pipe.sadd(self._owned, f"busy|{call_id}|{number}")
            await pipe.execute()

    async def call_ended(self, call_id: str, numbers: tuple[str, ...]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(PREFIX + "call:" + call_id)
            pipe.srem(self._owned, f"call|{call_id}")
            for number in numbers:
                pipe.hdel(PREFIX + "busy:" + number, call_id)
                pipe.srem(self._owned, f"busy|{call_id}|{number}")
            await pipe.execute()

    async def call_node(self, call_id: str) -> str | None:
        node = await self._redis.get(PREFIX + "call:" + call_id)
        return str(node) if node else None

    async def number_calls(self, number: str) -> dict[str, str]:
        return _strings(await self._redis.hgetall(PREFIX + "busy:" + number))

    async def forget_node(self, node_id: str) -> None:
        removed = await self._forget(keys=[f"{PREFIX}owned:{node_id}"], args=[node_id])
        log.info("cluster bus: removed %s entries of node %s", removed, node_id)


def _strings(table: dict[Any, Any]) -> dict[str, str]:
    return {str(key): str(value) for key, value in table.items()}


def _channel(node_id: str) -> str:
    return f"{PREFIX}node:{node_id}"


__all__ = ["ALL_NODES", "Bus", "Handler", "LocalBus", "Message", "RedisBus"]
