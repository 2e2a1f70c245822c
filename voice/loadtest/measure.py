"""Per-call measurements of the load test: what one direction of a call sent and
received, and the quality figures derived from it (the ITU-T G.107 E-model of
voice/audio/emodel.py, PESQ).

Pure: fed payloads, positions and times (time.perf_counter seconds, one clock
for sender and receiver, which share the process), returns numbers.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from voice.audio.emodel import mos_from_r, r_factor
from voice.rtp.stats import ReceptionStatistics

CLOCK_RATE = 48000

# -- one direction of a call ------------------------------------------------------


@dataclass
class DirectionResult:
    sent: int = 0
    received: int = 0
    lost: int = 0
    loss_pct: float = 0.0
    jitter_ms: float = 0.0
    delay_ms_mean: float | None = None
    delay_ms_p50: float | None = None
    delay_ms_p99: float | None = None
    signature_expected: str | None = None
    signature_heard: str | None = None
    integrity: str = "silent"
    r_factor: float | None = None
    mos: float | None = None
    pesq: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DirectionMeter:
    """Both ends of one direction: the sender notes each packet, the receiver each arrival.

    The sender replays a loop of `loop_length` payloads; packet number n
    carries loop position n % loop_length. The receiver maps a payload back
    to its position (`index_of`) and so to the latest packet sent there:
    with one-way delay under one loop, that is the packet itself, and its
    send time gives the delay. Payloads not in `index_of` (another stream's
    audio) are counted as received but carry no delay; payloads in `ignore`
    (the relay's ringback) are not this direction's audio at all.

    Payloads arriving within `window` (perf_counter times) are kept for
    analysis; with `keep_all`, every mapped payload is kept (for PESQ).
    """

    def __init__(
        self,
        index_of: Mapping[bytes, int],
        loop_length: int,
        *,
        ignore: frozenset[bytes] = frozenset(),
        window: tuple[float, float] | None = None,
        keep_all: bool = False,
    ) -> None:
        self.index_of = index_of
        self.loop_length = loop_length
        self.ignore = ignore
        self.window = window
        self.keep_all = keep_all
        self.sent = 0
        self._send_time = [0.0] * loop_length
        self._send_number = [-1] * loop_length
        self.received = 0
        self.mapped = 0
        self.first_number: int | None = None
        self.first_arrival: float | None = None
        self.first_mapped_arrival: float | None = None
        self.reception = ReceptionStatistics(CLOCK_RATE)
        self.delays_ms = array("f")
        self.window_payloads: list[tuple[int, bytes]] = []
        self.kept: list[tuple[int, bytes]] = []
        #: With keep_all, payloads that are not the sender's own, in arrival order.
        self.kept_foreign: list[bytes] = []

    # sender side

    def on_send(self, number: int, now: float) -> None:
        position = number % self.loop_length
        self._send_time[position] = now
        self._send_number[position] = number
        self.sent += 1

    # receiver side

    def on_receive(self, payload: bytes, sequence_number: int, timestamp: int, now: float) -> None:
        if payload in self.ignore:
            return
        self.received += 1
        if self.first_arrival is None:
            self.first_arrival = now
        self.reception.receive(sequence_number, timestamp, now, len(payload))
        window = self.window
        if window is not None and window[0] <= now < window[1]:
            self.window_payloads.append((sequence_number, payload))
        position = self.index_of.get(payload)
        if position is None:
            if self.keep_all:
                self.kept_foreign.append(payload)
            return
        number = self._send_number[position]
        if number < 0:
            return
        self.mapped += 1
        if self.first_number is None or number < self.first_number:
            self.first_number = number
        if self.first_mapped_arrival is None:
            self.first_mapped_arrival = now
        self.delays_ms.append((now - self._send_time[position]) * 1000.0)
        if self.keep_all:
            self.kept.append((number, payload))

    @property
    def lost(self) -> int:
        """Packets sent from the first one that got through and never received.

        Packets before that are not loss: a leg drops media until both legs of
        the call are bridged and connected.
        """
        if self.first_number is not None:
            return max(0, self.sent - self.first_number - self.mapped)
        # Not the sender's packets (a re-encoding relay, or another stream):
        # the gaps in the stream as received (RFC 3550 A.3).
        return self.reception.packets_lost

    def result(self) -> DirectionResult:
        lost = self.lost
        delivered = self.mapped if self.first_number is not None else self.received
        expected = delivered + lost
        result = DirectionResult(
            sent=self.sent,
            received=self.received,
            lost=lost,
            loss_pct=round(100.0 * lost / expected, 3) if expected else 0.0,
            jitter_ms=round(self.reception.jitter_ms, 3),
        )
        if self.delays_ms:
            delays = np.frombuffer(self.delays_ms, dtype=np.float32).astype(np.float64)
            result.delay_ms_mean = round(float(delays.mean()), 3)
            result.delay_ms_p50 = round(float(np.percentile(delays, 50)), 3)
            result.delay_ms_p99 = round(float(np.percentile(delays, 99)), 3)
        if self.received:
            r = r_factor(result.delay_ms_mean or 0.0, result.loss_pct / 100.0, result.jitter_ms)
            result.r_factor = round(r, 2)
            result.mos = round(mos_from_r(r), 3)
        return result


# -- PESQ ---------------------------------------------------------------------------

PESQ_RATE = 16000


def decimate_48k_to_16k(samples: np.ndarray) -> np.ndarray:
    """Low-pass (windowed sinc, 7.2 kHz) and keep every third sample: float64 out."""
    taps = np.arange(-96, 97)
    cutoff = 7200.0 / 48000.0
    kernel = 2 * cutoff * np.sinc(2 * cutoff * taps) * np.blackman(taps.size)
    kernel /= kernel.sum()
    filtered = np.convolve(np.asarray(samples, dtype=np.float64), kernel, mode="same")
    out: np.ndarray = filtered[::3]
    return out


def wideband_pesq(reference_48k: np.ndarray, degraded_48k: np.ndarray) -> float | None:
    """P.862.2 wideband PESQ (MOS-LQO) of 48 kHz int16 audio; None if it cannot score."""
    from pesq import pesq  # imported here: only sampled calls pay for it

    length = min(reference_48k.size, degraded_48k.size)
    if length < 48000:
        return None
    reference = decimate_48k_to_16k(reference_48k[:length])
    degraded = decimate_48k_to_16k(degraded_48k[:length])
    try:
        score = float(pesq(PESQ_RATE, reference, degraded, "wb"))
    except Exception:  # pesq raises its own errors for no utterances and the like
        return None
    return None if math.isnan(score) else round(score, 3)
