"""Per-call measurements of the load test: what one direction of a call sent and
received, and the quality figures derived from it (ITU-T G.107 E-model, PESQ).

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

from voice.rtp.stats import ReceptionStatistics

CLOCK_RATE = 48000
FRAME_MS = 20.0

# -- E-model (ITU-T G.107, simplified) ------------------------------------------
#
# R = R0 - Is - Id - Ie,eff + A with the G.107 defaults for everything that is
# not the network: R0 - Is = 93.2 (default noise, loudness, sidetone), A = 0
# (no advantage factor for a managed service).
R_DEFAULT = 93.2
# Mouth-to-ear delay Ta = one-way network delay + what the endpoints add:
# - packetisation: one 20 ms Opus frame, plus Opus' 6.5 ms look-ahead (algorithmic delay);
# - a receive jitter buffer: a 20 ms base plus twice the measured RFC 3550 jitter
#   (an adaptive buffer sized to absorb about two mean deviations).
PACKETISATION_MS = FRAME_MS + 6.5
JITTER_BUFFER_BASE_MS = 20.0
JITTER_BUFFER_FACTOR = 2.0
# Equipment impairment of the codec and its robustness to loss (G.113 Appendix I style).
# Opus at 32 kbit/s (what the generator sends) is at least as good as G.711 on the
# narrowband E-model scale, which tops out at R = 93.2: Ie = 0, as G.711.
# Its packet-loss concealment is at least as good as G.711's Appendix I PLC, which G.113
# rates Bpl = 25.1; with no in-band FEC negotiated (aiortc offers none) we do not claim
# more. Loss is taken as random (BurstR = 1): the meter counts loss, not its bursts.
OPUS_IE = 0.0
OPUS_BPL = 25.1
BURST_R = 1.0


def mouth_to_ear_ms(one_way_delay_ms: float, jitter_ms: float) -> float:
    return (
        max(0.0, one_way_delay_ms)
        + PACKETISATION_MS
        + JITTER_BUFFER_BASE_MS
        + JITTER_BUFFER_FACTOR * max(0.0, jitter_ms)
    )


def delay_impairment(ta_ms: float) -> float:
    """Id of G.107 in the common simplified form (Cole and Rosenbluth, 2001).

    Id = 0.024 Ta + 0.11 (Ta - 177.3) H(Ta - 177.3), Ta in ms.
    """
    return 0.024 * ta_ms + (0.11 * (ta_ms - 177.3) if ta_ms > 177.3 else 0.0)


def effective_equipment_impairment(loss_fraction: float) -> float:
    """Ie,eff = Ie + (95 - Ie) Ppl / (Ppl / BurstR + Bpl), Ppl in percent."""
    ppl = 100.0 * min(1.0, max(0.0, loss_fraction))
    return OPUS_IE + (95.0 - OPUS_IE) * ppl / (ppl / BURST_R + OPUS_BPL)


def r_factor(one_way_delay_ms: float, loss_fraction: float, jitter_ms: float) -> float:
    """Transmission rating R of one direction (0-100; 93.2 at best on this scale)."""
    ta = mouth_to_ear_ms(one_way_delay_ms, jitter_ms)
    r = R_DEFAULT - delay_impairment(ta) - effective_equipment_impairment(loss_fraction)
    return max(0.0, min(100.0, r))


def mos_from_r(r: float) -> float:
    """G.107 Annex B: the estimated conversational MOS (1-4.5) for R."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    # The polynomial dips just under 1 for R < 6.5: clamp to the scale.
    return max(1.0, 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6)


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
