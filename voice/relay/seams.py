"""Every private attribute of aiortc and aioice the relay's legs use, in one place.

aiortc is used for ICE and DTLS-SRTP only (voice/relay/leg.py); RTP is taken
from and handed to its transports below its public API. The seams, written
against aiortc 1.16 and aioice 0.13 (pyproject.toml pins aiortc below 1.17):

- RTCRtpReceiver._handle_rtp_packet / _handle_rtcp_packet and
  RTCRtpSender._handle_rtcp_packet / _run_rtcp: instance attributes shadow the
  methods for one leg (`install_peer_seams`), so packets never reach aiortc's
  jitter buffer or decoder and our own sender reports go out.
- RTCRtpSender._ssrc, __rtcp_started, __rtcp_exited, __cname, __packet_count,
  __octet_count, __rtt; RTCRtpReceiver.__stop_decoder; RTCRtpTransceiver._codecs.
- RTCDtlsTransport._send_rtp, _rtp_header_extensions_map, _state, _rx_srtp,
  _tx_srtp (the pylibsrtp Sessions the fast path uses directly).
- RTCIceTransport._connection (the aioice Connection), its _queue,
  data_received and _nominated pairs; StunProtocol.datagram_received,
  shadowed on the nominated pair's protocol by the fast path.

voice/ice.py holds the other aioice seams (where candidates are gathered).
tests/unit/test_relay_seams.py checks that the installed versions are the
pinned ones and that every attribute named here exists, so an upgrade fails
there, by name, before it fails in a call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pylibsrtp
from aiortc.rtcdtlstransport import State as DtlsState

__all__ = [
    "AIOICE_VERSION",
    "AIORTC_VERSION",
    "bound_receive_queue",
    "datagrams_intercepted",
    "dtls_connected",
    "header_extensions_map",
    "ice_connection",
    "install_peer_seams",
    "intercept_datagrams",
    "negotiated_payload_type",
    "nominated_pairs",
    "observe_receiver_rtp",
    "receiver_rtp_handler",
    "release_datagrams",
    "rtcp_events",
    "send_rtp",
    "sender_counters",
    "sender_ssrc",
    "shadows_rtp",
    "srtp_sessions",
    "stop_idle_decoder",
]

#: The minor versions these seams were written against (major.minor).
AIORTC_VERSION = "1.16"
AIOICE_VERSION = "0.13"

_CONNECTED = DtlsState.CONNECTED

# -- receiver and sender ---------------------------------------------------------------


def install_peer_seams(
    receiver: Any,
    sender: Any,
    *,
    rtp: Callable[..., Any],
    receiver_rtcp: Callable[..., Any],
    sender_rtcp: Callable[..., Any],
    run_rtcp: Callable[..., Any],
) -> None:
    """Shadow the receiver's and sender's packet handlers and the sender's RTCP loop."""
    # setattr: instance attributes shadow aiortc's methods for this leg only.
    setattr(receiver, "_handle_rtp_packet", rtp)  # noqa: B010
    setattr(receiver, "_handle_rtcp_packet", receiver_rtcp)  # noqa: B010
    setattr(sender, "_handle_rtcp_packet", sender_rtcp)  # noqa: B010
    setattr(sender, "_run_rtcp", run_rtcp)  # noqa: B010


def receiver_rtp_handler(receiver: Any) -> Callable[..., Any]:
    """The receiver's RTP handler as it is now (aiortc's own, or a shadow)."""
    handler: Callable[..., Any] = receiver._handle_rtp_packet
    return handler


def observe_receiver_rtp(receiver: Any, observer: Callable[..., Any]) -> None:
    """Put `observer` in front of the receiver's RTP handler (it calls the original)."""
    setattr(receiver, "_handle_rtp_packet", observer)  # noqa: B010


def shadows_rtp(receiver: Any, handler: Callable[..., Any]) -> bool:
    """Whether the receiver's RTP handler for this leg is `handler` itself."""
    return bool(vars(receiver).get("_handle_rtp_packet") == handler)


def sender_ssrc(sender: Any) -> int:
    return int(sender._ssrc)


def negotiated_payload_type(transceiver: Any) -> int | None:
    """The first negotiated codec's payload type (None before negotiation)."""
    codecs = transceiver._codecs
    return codecs[0].payloadType if codecs else None


def stop_idle_decoder(receiver: Any) -> None:
    """End the decoder thread aiortc starts per receiver (packets never reach it)."""
    stop = getattr(receiver, "_RTCRtpReceiver__stop_decoder", None)
    if stop is not None:
        stop()


def rtcp_events(sender: Any) -> tuple[asyncio.Event, asyncio.Event, str | None]:
    """The events RTCRtpSender.stop() waits on around its RTCP loop, and its CNAME."""
    started: asyncio.Event = getattr(sender, "_RTCRtpSender__rtcp_started")  # noqa: B009
    exited: asyncio.Event = getattr(sender, "_RTCRtpSender__rtcp_exited")  # noqa: B009
    cname: str | None = getattr(sender, "_RTCRtpSender__cname", None)
    return started, exited, cname


def sender_counters(sender: Any) -> tuple[int, int, float | None]:
    """aiortc's own sender counters: packets, payload octets, RTT (a decoding leg's)."""
    return (
        int(getattr(sender, "_RTCRtpSender__packet_count", 0)),
        int(getattr(sender, "_RTCRtpSender__octet_count", 0)),
        getattr(sender, "_RTCRtpSender__rtt", None),
    )


# -- DTLS transport ----------------------------------------------------------------------


async def send_rtp(dtls: Any, data: bytes) -> None:
    """SRTP-protect and send one serialized RTP or RTCP packet on the leg's ICE pair."""
    await dtls._send_rtp(data)


def header_extensions_map(dtls: Any) -> Any:
    return dtls._rtp_header_extensions_map


def dtls_connected(dtls: Any) -> bool:
    return dtls is not None and dtls._state is _CONNECTED


def srtp_sessions(dtls: Any) -> tuple[pylibsrtp.Session, pylibsrtp.Session] | None:
    """The (receive, send) SRTP sessions DTLS set up, None before that."""
    rx, tx = dtls._rx_srtp, dtls._tx_srtp
    if rx is None or tx is None:
        return None
    return rx, tx


# -- ICE -----------------------------------------------------------------------------------


def ice_connection(ice_transport: Any) -> Any:
    """The aioice Connection under an RTCIceTransport, None if there is none."""
    return getattr(ice_transport, "_connection", None)


def bound_receive_queue(ice_transport: Any, limit: int, on_drop: Callable[[], None]) -> None:
    """Drop (and count through on_drop) datagrams beyond `limit` waiting for aiortc.

    aioice queues every datagram for aiortc's receive loop without limit.
    """
    connection = ice_transport._connection
    queue = connection._queue
    deliver = connection.data_received

    def data_received(data: bytes, component: int) -> None:
        if queue.qsize() >= limit:
            on_drop()
            return
        deliver(data, component)

    connection.data_received = data_received


def nominated_pairs(connection: Any) -> dict[int, Any] | None:
    """The Connection's nominated candidate pair per component (the live dict)."""
    pairs: dict[int, Any] | None = getattr(connection, "_nominated", None)
    return pairs


def intercept_datagrams(protocol: Any, hook: Callable[[bytes, tuple[Any, ...]], None]) -> bool:
    """Shadow the pair's StunProtocol.datagram_received with `hook`; False if it is
    intercepted already."""
    if datagrams_intercepted(protocol):
        return False
    # setattr: an instance attribute shadows StunProtocol.datagram_received.
    setattr(protocol, "datagram_received", hook)  # noqa: B010
    return True


def datagrams_intercepted(protocol: Any) -> bool:
    return "datagram_received" in vars(protocol)


def release_datagrams(protocol: Any, hook: Callable[[bytes, tuple[Any, ...]], None]) -> None:
    """Undo intercept_datagrams (if `hook` is still the one in place)."""
    attributes = vars(protocol)
    if attributes.get("datagram_received") is hook:
        del attributes["datagram_received"]
