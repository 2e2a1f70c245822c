"""Typed application keys: how handlers reach the services built by create_app."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from signaling.calls.service import CallService
    from signaling.carrier.delivery import EventDelivery
    from signaling.carrier.policy import CarrierPolicy
    from signaling.cluster.node import Node
    from signaling.config import Config
    from signaling.identity.service import IdentityService
    from signaling.metrics import Metrics
    from signaling.presence import Presence
    from signaling.sip.trunk import SipTrunk
    from signaling.store.cdrs import CallRecordStore
    from signaling.store.database import Database
    from signaling.store.operators import OperatorStore
    from voice.relay.pool import RelayPool
    from voice.relay.relay import Relay

CONFIG: web.AppKey[Config] = web.AppKey("config")
DATABASE: web.AppKey[Database] = web.AppKey("database")
IDENTITY: web.AppKey[IdentityService] = web.AppKey("identity")
CDRS: web.AppKey[CallRecordStore] = web.AppKey("cdrs")
RELAY: web.AppKey[Relay | RelayPool] = web.AppKey("relay")
CALLS: web.AppKey[CallService] = web.AppKey("calls")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
PRESENCE: web.AppKey[Presence] = web.AppKey("presence")
POLICY: web.AppKey[CarrierPolicy] = web.AppKey("policy")
OPERATORS: web.AppKey[OperatorStore] = web.AppKey("operators")
DELIVERY: web.AppKey[EventDelivery] = web.AppKey("delivery")
TRUNK: web.AppKey[SipTrunk] = web.AppKey("trunk")
NODE: web.AppKey[Node] = web.AppKey("node")
DRAIN_TASK: web.AppKey[asyncio.Task[None]] = web.AppKey("drain_task")
