"""E.164 normalisation: national and international input, invalid and non-callable numbers."""

from __future__ import annotations

import pytest

from signaling.identity.numbers import InvalidNumber, is_e164, normalise


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+4917700000001", "DE", "+4917700000001"),
        ("+49 177 0000 0001", "US", "+4917700000001"),
        ("+49 (177) 0000-0001", "DE", "+4917700000001"),
        ("0177 0000 0001", "DE", "+4917700000001"),
        ("0177/00000001", "de", "+4917700000001"),
        ("004917700000001", "DE", "+4917700000001"),
        ("  0177 0000 0001  ", "DE", "+4917700000001"),
        ("(202) 555-0143", "US", "+12025550143"),
        ("+1 202 555 0143", "DE", "+12025550143"),
        ("030 12345678", "DE", "+493012345678"),
    ],
)
def test_formats_are_normalised_to_e164(raw: str, region: str, expected: str) -> None:
    assert normalise(raw, region) == expected


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("", "DE", "not_a_number"),
        ("hello", "DE", "not_a_number"),
        ("1" * 100, "DE", "not_a_number"),
        ("0177 0000 0001", "", "unknown_region"),
        ("0177 0000 0001", "ZZ", "unknown_region"),
        ("+49 137 12345678", "DE", "invalid"),
        ("+999 1234567", "DE", "invalid"),
        ("110", "DE", "not_callable"),  # emergency short code
        ("0900 1234567", "DE", "not_callable"),  # premium rate
    ],
)
def test_rejections_carry_a_reason(raw: str, region: str, reason: str) -> None:
    with pytest.raises(InvalidNumber) as info:
        normalise(raw, region)
    assert info.value.reason == reason
    assert str(info.value)


def test_international_input_needs_no_region() -> None:
    assert normalise("+4917700000001", "") == "+4917700000001"


def test_is_e164() -> None:
    assert is_e164("+4917700000001")
    assert not is_e164("0177 0000 0001")
    assert not is_e164("+49 177 0000 0001")
    assert not is_e164("+499001234567")
