"""A speech-like test signal, generated here (no recordings, no downloads).

In the spirit of ITU-T P.50 artificial voice: voiced segments made of
harmonics of a moving fundamental, shaped by three moving formants, under a
syllabic envelope (about 4 syllables per second), with short unvoiced
(fricative-like) bursts and pauses between words and phrases. It is
deterministic: the same seed gives the same samples, at any sample rate.

When the espeak-ng binary exists, `espeak_speech()` returns real synthetic
speech instead; the load test does not need it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from voice.audio.sources import resample
from voice.audio.wav import read_wav

SAMPLE_RATE = 48000
# Active speech level: about -20 dBFS RMS while talking, peaks well below clipping.
SPEECH_RMS = 0.1 * 32767
# A faint noise floor (about -66 dBFS), as in a quiet room: pauses are not
# digital silence, so every 20 ms Opus frame of a loop differs.
NOISE_FLOOR_RMS = 16.0
# Harmonics stop here: wideband telephony (P.862.2) scores 50-7000 Hz.
TOP_FREQUENCY = 7000.0

# Formant centre frequencies (Hz) of a few vowels (adult male, Peterson & Barney).
_VOWELS = (
    (730.0, 1090.0, 2440.0),  # a
    (530.0, 1840.0, 2480.0),  # e
    (270.0, 2290.0, 3010.0),  # i
    (570.0, 840.0, 2410.0),  # o
    (300.0, 870.0, 2240.0),  # u
)
_BANDWIDTHS = (90.0, 110.0, 170.0)


def speech_like(seconds: float, rate: int = SAMPLE_RATE, seed: int = 50) -> np.ndarray:
    """`seconds` of speech-like int16 mono audio at `rate` Hz."""
    count = round(seconds * rate)
    rng = np.random.default_rng(seed)
    t = np.arange(count) / rate
    plan = _syllable_plan(seconds, rng)

    # Control tracks at 200 Hz, interpolated to the sample rate.
    control_rate = 200
    control_t = np.arange(int(seconds * control_rate) + 2) / control_rate
    envelope = np.zeros(control_t.size)
    voiced = np.zeros(control_t.size)
    f0 = np.zeros(control_t.size)
    formants = np.zeros((3, control_t.size))
    for start, length, vowel, pitch, is_voiced in plan:
        inside = (control_t >= start) & (control_t < start + length)
        phase = (control_t[inside] - start) / length
        # Rise quickly, decay slowly: a syllable's loudness contour.
        envelope[inside] = np.sin(np.pi * phase) ** 0.7
        voiced[inside] = 1.0 if is_voiced else 0.0
        # Declination within the syllable, around the syllable's own pitch.
        f0[inside] = pitch * (1.08 - 0.16 * phase)
        target = np.array(_VOWELS[vowel])
        following = np.array(_VOWELS[(vowel + 2) % len(_VOWELS)])
        formants[:, inside] = target[:, None] + np.outer(following - target, 0.4 * phase)
    f0 = np.where(f0 > 0, f0, 120.0)
    formants = np.where(formants > 0, formants, np.array(_VOWELS[0])[:, None])

    env = np.interp(t, control_t, envelope)
    voicing = np.interp(t, control_t, voiced)
    f0_track = np.interp(t, control_t, f0)
    formant_tracks = [np.interp(t, control_t, formants[k]) for k in range(3)]

    # Voiced part: harmonics of the moving fundamental, weighted by the formants.
    phase = 2 * np.pi * np.cumsum(f0_track) / rate
    voiced_wave = np.zeros(count)
    top = min(TOP_FREQUENCY, rate / 2 - 200)
    harmonics = int(top / float(f0_track.min()))
    for k in range(1, harmonics + 1):
        frequency = k * f0_track
        gain = _formant_gain(frequency, formant_tracks) * (frequency < top)
        # -6 dB/octave glottal source tilt.
        voiced_wave += gain / k * np.sin(k * phase)

    # Unvoiced part: noise shaped towards high frequencies (fricatives).
    noise = rng.standard_normal(count)
    hiss = noise - np.concatenate(([0.0], noise[:-1]))
    if rate > 16000:
        # Keep the hiss under 7 kHz as well: a short moving average.
        width = max(1, rate // 14000)
        hiss = np.convolve(hiss, np.ones(width) / width, mode="same")

    voiced_wave /= np.sqrt(np.mean(voiced_wave**2)) or 1.0
    hiss /= np.sqrt(np.mean(hiss**2)) or 1.0
    signal = env * (voicing * voiced_wave + (1 - voicing) * 0.5 * hiss)
    active = env > 0.05
    rms = np.sqrt(np.mean(signal[active] ** 2)) if active.any() else 1.0
    signal *= SPEECH_RMS / rms
    signal += NOISE_FLOOR_RMS * rng.standard_normal(count)
    return np.asarray(np.clip(np.round(signal), -32767, 32767), dtype=np.int16)


def _syllable_plan(
    seconds: float, rng: np.random.Generator
) -> list[tuple[float, float, int, float, bool]]:
    """(start, length, vowel, pitch, voiced) of each syllable; gaps between are pauses."""
    plan: list[tuple[float, float, int, float, bool]] = []
    now = 0.15
    while now < seconds - 0.3:
        syllables = int(rng.integers(2, 7))  # one word or phrase
        phrase_pitch = float(rng.uniform(100.0, 160.0))
        for _ in range(syllables):
            length = float(rng.uniform(0.12, 0.28))
            if now + length > seconds - 0.1:
                break
            voiced = bool(rng.random() > 0.15)
            pitch = phrase_pitch * float(rng.uniform(0.9, 1.15))
            plan.append((now, length, int(rng.integers(len(_VOWELS))), pitch, voiced))
            now += length + float(rng.uniform(0.01, 0.05))
        # Pause between phrases: P.50 speech has about 40 % silence.
        now += float(rng.uniform(0.15, 0.5))
    return plan


def _formant_gain(frequency: np.ndarray, formants: list[np.ndarray]) -> np.ndarray:
    gain = np.zeros_like(frequency)
    for centre, bandwidth in zip(formants, _BANDWIDTHS, strict=True):
        gain += 1.0 / (1.0 + ((frequency - centre) / (bandwidth / 2)) ** 2)
    return gain


def espeak_speech(text: str, rate: int = SAMPLE_RATE) -> np.ndarray | None:
    """espeak-ng's rendering of `text` at `rate`, or None without the binary."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        return None
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "speech.wav"
        try:
            subprocess.run(
                [binary, "-w", str(path), text], check=True, capture_output=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        samples, source_rate = read_wav(path)
    return resample(samples, source_rate, rate)
