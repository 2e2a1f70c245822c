"""Synthetic audio sources and analysis of received audio."""

from voice.audio.analysis import dominant_frequency, tone_fraction
from voice.audio.sources import AudioSource, parse_source
from voice.audio.wav import read_wav, write_wav

__all__ = [
    "AudioSource",
    "dominant_frequency",
    "parse_source",
    "read_wav",
    "tone_fraction",
    "write_wav",
]
