"""Delivery of verification codes (SMS in production, a log line in development)."""

from __future__ import annotations

import logging
from typing import Protocol

sms_log = logging.getLogger("anruf.sms")


class CodeSender(Protocol):
    """Delivers a verification code to a number. Raise to report failure."""

    async def send(self, number: str, code: str) -> None: ...


class ConsoleSender:
    """Writes the code to the ``anruf.sms`` log instead of sending an SMS.

    For development and tests only: the code appears in the server log.
    """

    async def send(self, number: str, code: str) -> None:
        sms_log.info("verification code for %s: %s", number, code)


class RecordingSender:
    """Keeps every code in memory: a fake for tests and local tooling."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send(self, number: str, code: str) -> None:
        self.sent.append((number, code))

    def last_code(self, number: str) -> str:
        """The most recent code sent to ``number``; KeyError if none was."""
        for sent_to, code in reversed(self.sent):
            if sent_to == number:
                return code
        raise KeyError(number)


_SENDERS: dict[str, type[ConsoleSender]] = {"console": ConsoleSender}


def make_sender(name: str) -> CodeSender:
    """The sender configured as ``Config.sms_sender``; ValueError if unknown."""
    try:
        factory = _SENDERS[name]
    except KeyError:
        known = ", ".join(sorted(_SENDERS))
        raise ValueError(f"unknown SMS sender {name!r} (known: {known})") from None
    return factory()


__all__ = ["CodeSender", "ConsoleSender", "RecordingSender", "make_sender"]
