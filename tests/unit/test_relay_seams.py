"""The aiortc and aioice internals the relay relies on (voice/relay/seams.py, voice/ice.py)
are there in the installed versions: an upgrade fails here, by name, first."""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import AsyncIterator
from typing import Any

import aioice.ice
import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender

from voice.relay import seams
from voice.relay.leg import SilentTrack


def test_the_installed_versions_are_the_ones_the_seams_were_written_for() -> None:
    assert importlib.metadata.version("aiortc").startswith(seams.AIORTC_VERSION + ".")
    assert importlib.metadata.version("aioice").startswith(seams.AIOICE_VERSION + ".")


def test_the_methods_shadowed_or_called_exist() -> None:
    for cls, names in (
        (
            RTCRtpReceiver,
            ("_handle_rtp_packet", "_handle_rtcp_packet", "_RTCRtpReceiver__stop_decoder"),
        ),
        (RTCRtpSender, ("_handle_rtcp_packet", "_run_rtcp")),
        (RTCDtlsTransport, ("_send_rtp",)),
        (aioice.ice.StunProtocol, ("datagram_received",)),
        (aioice.ice.Connection, ("data_received", "get_component_candidates")),
    ):
        for name in names:
            assert callable(getattr(cls, name, None)), f"{cls.__name__}.{name}"
    # voice/ice.py replaces these module functions.
    assert callable(aioice.ice.get_host_addresses)
    assert callable(aioice.ice.server_reflexive_candidate)


@pytest.fixture
async def pc() -> AsyncIterator[RTCPeerConnection]:
    connection = RTCPeerConnection()
    yield connection
    await connection.close()


def has(obj: Any, name: str) -> bool:
    return name in vars(obj) or hasattr(type(obj), name)


async def test_the_private_fields_read_exist(pc: RTCPeerConnection) -> None:
    transceiver = pc.addTransceiver(SilentTrack(), direction="sendrecv")
    sender, receiver = transceiver.sender, transceiver.receiver
    for name in (
        "_ssrc",
        "_RTCRtpSender__rtcp_started",
        "_RTCRtpSender__rtcp_exited",
        "_RTCRtpSender__cname",
        "_RTCRtpSender__packet_count",
        "_RTCRtpSender__octet_count",
        "_RTCRtpSender__rtt",
    ):
        assert has(sender, name), f"RTCRtpSender.{name}"
    assert isinstance(sender._ssrc, int)
    started, exited, _ = seams.rtcp_events(sender)
    assert isinstance(started, asyncio.Event) and isinstance(exited, asyncio.Event)
    assert has(transceiver, "_codecs")
    dtls = sender.transport
    assert dtls is receiver.transport
    for name in ("_state", "_rx_srtp", "_tx_srtp", "_rtp_header_extensions_map"):
        assert has(dtls, name), f"RTCDtlsTransport.{name}"
    assert not seams.dtls_connected(dtls) and seams.srtp_sessions(dtls) is None
    connection = seams.ice_connection(dtls.transport)
    assert isinstance(connection, aioice.ice.Connection)
    for name in ("_queue", "_nominated", "_protocols"):
        assert has(connection, name), f"aioice Connection.{name}"
    assert seams.nominated_pairs(connection) == {}


async def test_the_peer_seams_shadow_for_one_leg_only(pc: RTCPeerConnection) -> None:
    first = pc.addTransceiver(SilentTrack(), direction="sendrecv")
    second = pc.addTransceiver(SilentTrack(), direction="sendrecv")

    async def rtp(*args: object) -> None: ...

    seams.install_peer_seams(
        first.receiver, first.sender, rtp=rtp, receiver_rtcp=rtp, sender_rtcp=rtp, run_rtcp=rtp
    )
    assert (
        seams.shadows_rtp(first.receiver, rtp) and seams.receiver_rtp_handler(first.receiver) is rtp
    )
    assert not seams.shadows_rtp(second.receiver, rtp)


async def test_datagrams_are_intercepted_once_and_released() -> None:
    protocol = aioice.ice.StunProtocol(None)  # type: ignore[arg-type]

    def hook(data: bytes, addr: tuple[Any, ...]) -> None: ...

    def other(data: bytes, addr: tuple[Any, ...]) -> None: ...

    assert seams.intercept_datagrams(protocol, hook)
    assert not seams.intercept_datagrams(protocol, other)
    seams.release_datagrams(protocol, other)  # not the one in place: nothing happens
    assert seams.datagrams_intercepted(protocol)
    seams.release_datagrams(protocol, hook)
    assert not seams.datagrams_intercepted(protocol)
