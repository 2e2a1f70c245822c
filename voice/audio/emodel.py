"""The E-model (ITU-T G.107, simplified): a transmission rating R and the estimated
conversational MOS of one direction of an Opus call, from its one-way delay, loss and
RFC 3550 jitter.

Pure. Used by the call records (the MOS of each leg, signaling/carrier/policy.py) and
by the load tester's meters (voice/loadtest/measure.py).
"""

from __future__ import annotations

#: One Opus frame (what the app and the load generator send).
FRAME_MS = 20.0

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


__all__ = [
    "BURST_R",
    "OPUS_BPL",
    "OPUS_IE",
    "R_DEFAULT",
    "delay_impairment",
    "effective_equipment_impairment",
    "mos_from_r",
    "mouth_to_ear_ms",
    "r_factor",
]
