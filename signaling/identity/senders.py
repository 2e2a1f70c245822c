"""Delivery of verification codes (SMS in production, a log line in development).

``Config.sms_sender`` chooses: "console" writes the code to the log; "carrier"
asks the number's operator to send the SMS, as a signed ``sms.send`` event
POSTed to its ``sms_url`` by the event delivery (signaling/carrier/delivery.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from signaling.carrier import events
from signaling.store import subscriptions

if TYPE_CHECKING:
    from signaling.store.database import Database

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


class NoCarrier(LookupError):
    """No operator can send an SMS to the number."""


class CarrierSender:
    """Has the number's operator send the code: an ``sms.send`` event to its ``sms_url``.

    The operator is the one that provisioned the number (``subscribers``), else
    ``default_operator``; with neither, or when that operator has no
    ``sms_url``, ``send`` raises NoCarrier (IdentityService answers 503). The
    event is committed in its own transaction, keyed ``sms:<number>`` so an SMS
    gateway outage holds up no other events of the number, and ``notify`` (the
    delivery worker's) is called after the commit so it goes out at once.
    """

    def __init__(
        self,
        database: Database,
        *,
        default_operator: str = "",
        notify: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = database
        self._default_operator = default_operator
        self._notify = notify
        self._clock = clock

    async def send(self, number: str, code: str) -> None:
        async with self._db.transaction() as conn:
            operator_id = await subscriptions.operator_of(conn, number) or self._default_operator
            if not operator_id:
                raise NoCarrier(f"no operator provisioned {number} and there is no default")
            sms_url = await subscriptions.sms_url_of(conn, operator_id)
            if not sms_url:
                raise NoCarrier(f"operator {operator_id!r} has no sms_url to send to {number}")
            event_id = await events.append(
                conn,
                operator_id=operator_id,
                type="sms.send",
                data={"to": number, "text": f"Your Anruf code is {code}", "code": code},
                ordering_key=f"sms:{number}",
                now=self._clock(),
            )
        sms_log.info(
            "verification code for %s handed to operator %s (%s)", number, operator_id, event_id
        )
        if self._notify is not None:
            self._notify()


_SENDERS = ("carrier", "console")


def make_sender(
    name: str,
    database: Database | None = None,
    *,
    default_operator: str = "",
    notify: Callable[[], None] | None = None,
) -> CodeSender:
    """The sender configured as ``Config.sms_sender``; ValueError if unknown.

    "carrier" needs the ``database`` (and takes ``Config.sms_default_operator``
    and the delivery worker's ``notify``).
    """
    if name == "console":
        return ConsoleSender()
    if name == "carrier":
        if database is None:
            raise ValueError("the carrier SMS sender needs the database")
        return CarrierSender(database, default_operator=default_operator, notify=notify)
    known = ", ".join(_SENDERS)
    raise ValueError(f"unknown SMS sender {name!r} (known: {known})")


__all__ = [
    "CarrierSender",
    "CodeSender",
    "ConsoleSender",
    "NoCarrier",
    "RecordingSender",
    "make_sender",
]
