"""The parties of a call: an app device, or the phone network behind the operator's trunk.

Pure. The call machine, the service and the records speak of parties as these
values; only the stored form of a party (a device id in a call record or a
live_calls row) is a string, read back with :func:`party_from_id`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AppDevice", "Party", "PhoneNetwork", "party_from_id"]

#: The stored form of a phone-network party: "sip:<call id>".
_PHONE_NETWORK_PREFIX = "sip:"


@dataclass(frozen=True)
class AppDevice:
    """One device of an app user, reached over its WebSocket (wherever it is connected)."""

    device_id: str

    def __str__(self) -> str:
        return self.device_id


@dataclass(frozen=True)
class PhoneNetwork:
    """The far end of a call on the phone network, carried by the operator's SIP trunk.

    One per call: it stands in the call machine like a device of its own.
    """

    call_id: str

    @property
    def device_id(self) -> str:
        """How records and live_calls rows name this party."""
        return _PHONE_NETWORK_PREFIX + self.call_id

    def __str__(self) -> str:
        return self.device_id


Party = AppDevice | PhoneNetwork


def party_from_id(device_id: str) -> Party:
    """The party a stored device id names (the inverse of ``device_id``)."""
    if device_id.startswith(_PHONE_NETWORK_PREFIX):
        return PhoneNetwork(device_id[len(_PHONE_NETWORK_PREFIX) :])
    return AppDevice(device_id)
