"""Clock arithmetic of RTCP sender and receiver reports (RFC 3550 §6.4)."""

from __future__ import annotations

# Seconds between the NTP epoch (1900) and the Unix epoch (1970).
NTP_UNIX_OFFSET = 2_208_988_800


def ntp_timestamp(unix_time: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point) of a Unix time."""
    seconds = int(unix_time) + NTP_UNIX_OFFSET
    fraction = int((unix_time % 1.0) * (1 << 32)) & 0xFFFFFFFF
    return ((seconds & 0xFFFFFFFF) << 32) | fraction


def compact_ntp(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp, as carried in LSR (§6.4.1)."""
    return (ntp >> 16) & 0xFFFFFFFF


def round_trip_time(arrival_unix_time: float, lsr: int, dlsr: int) -> float | None:
    """Round-trip time in seconds from a report block, or None if it carries none.

    §6.4.1: RTT = A - LSR - DLSR, all in 1/65536 s units of compact NTP,
    where A is when the report arrived. LSR 0 means no SR was received yet.
    """
    if lsr == 0:
        return None
    arrival = compact_ntp(ntp_timestamp(arrival_unix_time))
    rtt = (arrival - lsr - dlsr) & 0xFFFFFFFF
    if rtt >= 1 << 31:
        # Negative: clocks or a stale LSR; no usable sample.
        return None
    return rtt / 65536.0


def delay_since_last_sr(now_unix_time: float, last_sr_arrival: float | None) -> int:
    """DLSR field: time since the last SR arrived, in 1/65536 s (0 if none)."""
    if last_sr_arrival is None:
        return 0
    delay = now_unix_time - last_sr_arrival
    if delay <= 0:
        return 0
    return min(int(delay * 65536), 0xFFFFFFFF)
