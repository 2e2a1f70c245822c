"""Relay legs that fail, and legs that are refused, over real UDP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from voice.client.media import MediaEndpoint
from voice.ice import ice_configuration
from voice.relay import NoOpusError, UnknownLegError
from voice.relay.relay import Relay

pytestmark = pytest.mark.timeout(30)


class Failures:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []
        self.event = asyncio.Event()

    def __call__(self, leg_id: str, detail: str) -> None:
        self.calls.append((leg_id, detail, time.monotonic()))
        self.event.set()


async def test_offer_without_opus_is_refused() -> None:
    relay = Relay(bind_address="127.0.0.1")
    device = MediaEndpoint(source="silence")
    try:
        offer = await device.create_offer()
        pcmu_only = "\r\n".join(line for line in offer.split("\r\n") if "opus" not in line.lower())
        with pytest.raises(NoOpusError):
            await relay.answer("a", pcmu_only)
        with pytest.raises(ValueError, match="SDP"):
            await relay.answer("a", "this is not SDP")
        assert relay.active_legs == 0
        with pytest.raises(UnknownLegError):
            await relay.accept_answer("gone", offer)
        with pytest.raises(ValueError):
            relay.start_ringback("gone")
        assert relay.stats("gone") == await relay.close_leg("gone")
    finally:
        await device.close()
        await relay.close()


async def test_relay_candidates_carry_the_announce_address() -> None:
    relay = Relay(bind_address="127.0.0.1", announce_address="192.0.2.10")
    try:
        offer = await relay.offer("b")
        candidates = [line for line in offer.split("\r\n") if line.startswith("a=candidate:")]
        assert candidates
        assert all(" 192.0.2.10 " in line for line in candidates)
        assert "127.0.0.1" not in offer
    finally:
        await relay.close()


async def test_silent_connected_leg_reports_media_timeout_once() -> None:
    failures = Failures()
    relay = Relay(bind_address="127.0.0.1", media_timeout=1.0, on_leg_failed=failures)
    # A device that connects but never sends RTP (recvonly).
    device = RTCPeerConnection(configuration=ice_configuration([]))
    device.addTransceiver("audio", direction="recvonly")
    try:
        await device.setLocalDescription(await device.createOffer())
        answer = await relay.answer("a", device.localDescription.sdp)
        await device.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await asyncio.wait_for(failures.event.wait(), 8)
        await asyncio.sleep(1.5)
        assert [(leg, detail) for leg, detail, _ in failures.calls] == [("a", "media_timeout")]
    finally:
        await device.close()
        await relay.close()


async def test_closed_legs_never_report_failure() -> None:
    failures = Failures()
    relay = Relay(bind_address="127.0.0.1", media_timeout=0.5, on_leg_failed=failures)
    device = MediaEndpoint(source="tone:440")
    try:
        answer = await relay.answer("a", await device.create_offer())
        await device.accept_answer(answer)
        async with asyncio.timeout(10):
            while device.connection_state != "connected":  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await device.close()  # the device vanishes...
        final = await relay.close_leg("a")  # ...and the call is torn down first
        await asyncio.sleep(1.5)
        assert failures.calls == []
        assert final.packets_received > 0
    finally:
        await relay.close()


async def test_unreachable_device_reports_ice_failure() -> None:
    failures = Failures()
    relay = Relay(bind_address="127.0.0.1", on_leg_failed=failures, connect_timeout=2.0)
    device = MediaEndpoint(source="silence")
    try:
        offer = await relay.offer("b")
        answer = await device.answer(offer)
        await device.close()  # its port is gone: connectivity checks cannot succeed
        await relay.accept_answer("b", answer)
        await asyncio.wait_for(failures.event.wait(), 6)
        assert [(leg, detail) for leg, detail, _ in failures.calls] == [("b", "ice_failed")]
    finally:
        await relay.close()
