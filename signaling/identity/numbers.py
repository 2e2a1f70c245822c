"""E.164 phone numbers: the identity of every Anruf user.

Input arrives in whatever format people type (``0177 0000 0001``,
``+49 (177) 0000-0001``, ``0049...``); it is read with phonenumbers against a
default region and always stored and compared as E.164 (ITU-T E.164,
``+<country code><national number>``).
"""

from __future__ import annotations

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType, shortnumberinfo

#: Longer input is not a phone number; bounding it keeps parsing cheap.
MAX_INPUT_LENGTH = 64

#: Number types that cannot hold an Anruf identity or be called through us:
#: callers pay surcharges (premium rate, shared cost) or nobody answers
#: (pagers, voicemail access).
NOT_CALLABLE_TYPES = frozenset(
    {
        PhoneNumberType.PREMIUM_RATE,
        PhoneNumberType.SHARED_COST,
        PhoneNumberType.PAGER,
        PhoneNumberType.VOICEMAIL,
    }
)


class InvalidNumber(ValueError):
    """The input is not a number we accept; ``reason`` is machine-readable.

    Reasons: ``not_a_number`` (unparseable), ``unknown_region`` (national
    format with no usable region), ``invalid`` (parses, but no such number
    exists in the numbering plan), ``not_callable`` (short codes,
    premium-rate and similar services).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def normalise(raw: str, region: str) -> str:
    """Return ``raw`` as E.164, reading national formats in ``region``.

    Raises InvalidNumber with a reason for anything that is not a callable
    subscriber number.
    """
    text = raw.strip()
    if not text or len(text) > MAX_INPUT_LENGTH:
        raise InvalidNumber("not_a_number", "the value is not a phone number")
    region_code = region.strip().upper() if region else ""
    if region_code not in phonenumbers.SUPPORTED_REGIONS:
        region_code = ""
    try:
        parsed = phonenumbers.parse(text, region_code or None)
    except NumberParseException as exc:
        if exc.error_type == NumberParseException.INVALID_COUNTRY_CODE:
            if not text.startswith("+") and not region_code:
                raise InvalidNumber(
                    "unknown_region",
                    "the number is in national format and no valid region was given",
                ) from exc
            raise InvalidNumber("invalid", "the country code does not exist") from exc
        raise InvalidNumber("not_a_number", "the value is not a phone number") from exc
    if not phonenumbers.is_valid_number(parsed):
        # Emergency and service short codes (110, 112, 11833) are valid short
        # numbers but never valid subscriber numbers.
        if shortnumberinfo.is_valid_short_number(parsed):
            raise InvalidNumber("not_callable", "short codes cannot be used")
        raise InvalidNumber("invalid", "no such number exists in the numbering plan")
    if phonenumbers.number_type(parsed) in NOT_CALLABLE_TYPES:
        raise InvalidNumber(
            "not_callable", "premium-rate, shared-cost, pager and voicemail numbers cannot be used"
        )
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def is_e164(value: str) -> bool:
    """True if ``value`` is already a normalised, callable E.164 number."""
    if not value.startswith("+"):
        return False
    try:
        return normalise(value, "") == value
    except InvalidNumber:
        return False


__all__ = ["MAX_INPUT_LENGTH", "NOT_CALLABLE_TYPES", "InvalidNumber", "is_e164", "normalise"]
