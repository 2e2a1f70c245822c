"""Why a call ended: every end reason and the details each one may carry.

The one registry of end reasons (docs/protocol.md, "End reasons"). The server's
call machine ends calls with these, `call.ended` carries them to devices, call
records store them, and the web app reads them from the JSON document
(wire/document.py) instead of spelling them again.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final


class EndReason(enum.StrEnum):
    COMPLETED = "completed"
    BUSY = "busy"
    DECLINED = "declined"
    NO_ANSWER = "no_answer"
    CANCELLED = "cancelled"
    UNAVAILABLE = "unavailable"
    ANSWERED_ELSEWHERE = "answered_elsewhere"
    DECLINED_ELSEWHERE = "declined_elsewhere"
    FAILED = "failed"
    #: The caller's operator does not allow this call (suspended, no bundle for it).
    NOT_ALLOWED = "not_allowed"
    #: The bundle's minutes (or its fair-use cap) ran out, before or during the call.
    QUOTA_EXHAUSTED = "quota_exhausted"


class Detail(enum.StrEnum):
    """The details an end reason may carry; each belongs to the reasons in END_REASONS."""

    CALLER_CONNECTION_LOST = "caller_connection_lost"
    CALLEE_CONNECTION_LOST = "callee_connection_lost"
    NO_DEVICE_ONLINE = "no_device_online"
    NOT_AN_APP_USER = "not_an_app_user"
    NO_SUCH_NUMBER = "no_such_number"
    CALLEE_UNAVAILABLE = "callee_unavailable"
    SUBSCRIBER_SUSPENDED = "subscriber_suspended"
    DESTINATION_NOT_ALLOWED = "destination_not_allowed"
    DESTINATION_BLOCKED = "destination_blocked"
    VELOCITY_EXCEEDED = "velocity_exceeded"
    QUOTA_EXHAUSTED = "quota_exhausted"
    FAIR_USE_EXCEEDED = "fair_use_exceeded"
    BUNDLE_MINUTES_USED = "bundle_minutes_used"
    OVERLOADED = "overloaded"
    TRUNK_UNAVAILABLE = "trunk_unavailable"
    TRUNK_TIMEOUT = "trunk_timeout"
    NO_COMMON_CODEC = "no_common_codec"
    NO_OPUS_IN_OFFER = "no_opus_in_offer"
    BAD_SDP = "bad_sdp"
    BAD_SDP_IN_ANSWER = "bad_sdp_in_answer"
    CONNECTION_LOST = "connection_lost"
    RELAY_UNAVAILABLE = "relay_unavailable"
    MEDIA_ICE_FAILED = "media:ice_failed"
    MEDIA_DTLS_FAILED = "media:dtls_failed"
    MEDIA_TIMEOUT = "media:media_timeout"
    MEDIA_CONSENT_EXPIRED = "media:consent_expired"
    MEDIA_CLOSED_BY_DEVICE = "media:closed_by_device"
    MEDIA_RELAY_WORKER_LOST = "media:relay_worker_lost"
    SERVER_SHUTDOWN = "server_shutdown"
    NODE_LOST = "node_lost"


class MediaFailure(enum.StrEnum):
    """Why the relay gave up a device's media leg (voice/relay): the detail of the
    call's end is the failure with MEDIA_DETAIL_PREFIX ("media:ice_failed")."""

    #: No ICE path before the connect timeout, or ICE failed before the call connected.
    ICE_FAILED = "ice_failed"
    #: ICE completed but the DTLS handshake did not.
    DTLS_FAILED = "dtls_failed"
    #: Connected, then no RTP for the media timeout.
    MEDIA_TIMEOUT = "media_timeout"
    #: Connected, then ICE consent expired (RFC 7675).
    CONSENT_EXPIRED = "consent_expired"
    #: The device closed its DTLS session.
    CLOSED_BY_DEVICE = "closed_by_device"
    #: The relay process or host carrying the leg was lost.
    RELAY_WORKER_LOST = "relay_worker_lost"


#: A media leg's failure as the relay names it ("ice_failed") becomes the detail "media:ice_failed".
MEDIA_DETAIL_PREFIX: Final = "media:"
#: Another final response from the phone network to our INVITE: "trunk_503".
TRUNK_STATUS_PATTERN: Final = r"^trunk_[0-9]{3}$"
_TRUNK_STATUS = re.compile(TRUNK_STATUS_PATTERN)


def media_detail(failure: str) -> str:
    """The end detail for a media leg the relay reports failed (``"ice_failed"``)."""
    return f"{MEDIA_DETAIL_PREFIX}{failure}"


def trunk_status_detail(status: int) -> str:
    """The end detail for a final response from the network that no reason covers."""
    return f"trunk_{status}"


@dataclass(frozen=True)
class Reason:
    """One end reason: what it means, and the details it may carry."""

    description: str
    details: Mapping[Detail, str] = field(default_factory=dict)
    #: The reason may come without a detail ("").
    bare: bool = True
    #: Details by pattern (regular expressions) beyond the listed ones, with what they mean.
    patterns: Mapping[str, str] = field(default_factory=dict)


_MEDIA = "the device's media leg failed: "

END_REASONS: Final[Mapping[EndReason, Reason]] = MappingProxyType(
    {
        EndReason.COMPLETED: Reason("a party hung up a connected call"),
        EndReason.BUSY: Reason("the callee is already in a call (the network answered 486/600)"),
        EndReason.DECLINED: Reason("a callee device declined (the network answered 603/607)"),
        EndReason.NO_ANSWER: Reason(
            "nobody answered within the ring timeout (or the network answered 408)"
        ),
        EndReason.CANCELLED: Reason(
            "the caller hung up before the answer",
            {Detail.CALLER_CONNECTION_LOST: "the caller's connection was lost before the answer"},
        ),
        EndReason.UNAVAILABLE: Reason(
            "the callee cannot be reached",
            {
                Detail.NO_DEVICE_ONLINE: "no device of the callee is online",
                Detail.NOT_AN_APP_USER: "not an app user, and no bundle of the caller carries it",
                Detail.CALLEE_CONNECTION_LOST: "the ringing devices went away",
                Detail.NO_SUCH_NUMBER: "the network answered 404/484/604",
                Detail.CALLEE_UNAVAILABLE: "the network answered 410/480",
            },
        ),
        EndReason.ANSWERED_ELSEWHERE: Reason("another device of the callee answered"),
        EndReason.DECLINED_ELSEWHERE: Reason("another device of the callee declined"),
        EndReason.NOT_ALLOWED: Reason(
            "the caller's operator does not allow the call",
            {
                Detail.SUBSCRIBER_SUSPENDED: "the caller's subscription is suspended",
                Detail.DESTINATION_NOT_ALLOWED: "the number is outside the bundle's destinations",
                Detail.DESTINATION_BLOCKED: "a destination nobody may call from this service",
                Detail.VELOCITY_EXCEEDED: "too many calls or minutes to phone numbers this hour",
            },
            bare=False,
        ),
        EndReason.QUOTA_EXHAUSTED: Reason(
            "the caller's bundle has no minutes left",
            {
                Detail.QUOTA_EXHAUSTED: "no minutes left at setup",
                Detail.FAIR_USE_EXCEEDED: "the bundle's fair-use cap is reached at setup",
                Detail.BUNDLE_MINUTES_USED: "the minutes ran out during the call (to both parties)",
            },
        ),
        EndReason.FAILED: Reason(
            "the call could not go on",
            {
                Detail.OVERLOADED: "this server is at capacity and refused the call at once",
                Detail.TRUNK_UNAVAILABLE: "the operator's trunk is down or at its limits",
                Detail.TRUNK_TIMEOUT: "the network never answered our INVITE",
                Detail.NO_COMMON_CODEC: "the network offered no codec we take",
                Detail.NO_OPUS_IN_OFFER: "the device's offer has no Opus",
                Detail.BAD_SDP: "the relay could not answer the device's offer",
                Detail.BAD_SDP_IN_ANSWER: "the relay could not take the device's answer",
                Detail.CONNECTION_LOST: "a party's WebSocket did not come back within the grace",
                Detail.RELAY_UNAVAILABLE: "no media relay could take the call",
                Detail.MEDIA_ICE_FAILED: _MEDIA + "no ICE path",
                Detail.MEDIA_DTLS_FAILED: _MEDIA + "the DTLS handshake failed",
                Detail.MEDIA_TIMEOUT: _MEDIA + "no audio for media_timeout",
                Detail.MEDIA_CONSENT_EXPIRED: _MEDIA + "ICE consent expired (RFC 7675)",
                Detail.MEDIA_CLOSED_BY_DEVICE: _MEDIA + "the device closed its DTLS session",
                Detail.MEDIA_RELAY_WORKER_LOST: _MEDIA + "the relay process carrying it died",
                Detail.SERVER_SHUTDOWN: "the server holding the call shut down",
                Detail.NODE_LOST: "the server holding the call died; another one ended it",
            },
            bare=False,
            patterns={TRUNK_STATUS_PATTERN: "another final response from the network"},
        ),
    }
)

#: A device ends a call itself with this reason when the server refused its request
#: (the detail is the error code); it never comes from the server.
DEVICE_ERROR: Final = "error"


def allowed(reason: str, detail: str) -> bool:
    """The server may end a call with this reason and detail."""
    try:
        spec = END_REASONS[EndReason(reason)]
    except ValueError:
        return False
    if not detail:
        return spec.bare
    if detail in spec.details:
        return True
    return any(re.match(pattern, detail) for pattern in spec.patterns)


def all_details() -> frozenset[str]:
    return frozenset(detail for spec in END_REASONS.values() for detail in spec.details)


def _check() -> None:
    """Every Detail belongs to a reason (a detail nobody may send is a mistake)."""
    orphans = set(Detail) - all_details()
    if orphans:  # pragma: no cover - caught by the unit tests at once
        raise AssertionError(f"details of no reason: {sorted(orphans)}")
    unlisted = {media_detail(failure) for failure in MediaFailure} - set(Detail)
    if unlisted:  # pragma: no cover - caught by the unit tests at once
        raise AssertionError(f"media failures with no detail: {sorted(unlisted)}")
    assert _TRUNK_STATUS.match(trunk_status_detail(503))


_check()
