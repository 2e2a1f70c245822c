"""Calls in a real browser: Chromium running the web app against the server and relay.

Each browser user is Debian's Chromium with a fake microphone playing 440 Hz; the
other party is the Python app client on the same server. What is checked is what a
user notices: the screens and states the page shows, and audio in both directions.
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

from playwright.async_api import Page, expect

from tests.browser.conftest import (
    MIC_TONE,
    BrowserUser,
    Shots,
    SignedInPage,
    audio_stats,
    digits,
    sign_in,
)
from tests.conftest import ALICE, BOB, TEST_CODE, Server, ServerFactory
from tests.integration.provisioning import add_bundle, add_operator, add_subscriber
from tests.integration.sipp import Sipp
from tests.integration.test_calls import RATE, heard
from tests.integration.test_trunk_calls import LANDLINE, trunk_up
from tests.ports import free_port
from voice.audio.analysis import tone_fraction

STATE_TIMEOUT = 10_000  # ms, for anything the page shows after a server event


async def call_state(page: Page, state: str) -> None:
    await expect(page.get_by_test_id("call-state")).to_have_attribute(
        "data-state", state, timeout=STATE_TIMEOUT
    )


async def end_reason(page: Page, reason: str) -> str:
    """Waits until the page shows the call ended for ``reason``; returns the text shown."""
    shown = page.get_by_test_id("call-end-reason")
    await expect(shown).to_have_attribute("data-reason", reason, timeout=STATE_TIMEOUT)
    await expect(shown).to_be_visible()
    return (await shown.inner_text()).strip()


async def dial(page: Page, number: str) -> None:
    await page.get_by_test_id("dial-number").fill(number)
    await page.get_by_test_id("call-button").click()


async def test_sign_in_refuses_a_wrong_code_and_accepts_the_right_one(
    web_server: Server, browser_user: BrowserUser, shots: Shots
) -> None:
    context = await browser_user()
    page = context.pages[0] if context.pages else await context.new_page()
    await page.goto(f"{web_server.url}/?test=1")
    await shots.take(page, "sign-in")
    await shots.take(page, "sign-in-phone", phone=True)
    await page.get_by_test_id("number").fill(ALICE)
    await page.get_by_test_id("request-code").click()
    wrong = "13579" if TEST_CODE != "135790" else "24680"
    await page.get_by_test_id("code").fill(wrong + "0")
    await page.get_by_test_id("verify").click()
    error = page.get_by_test_id("signin-error")
    await expect(error).to_be_visible(timeout=STATE_TIMEOUT)
    assert (await error.inner_text()).strip(), "the sign-in error says nothing"
    await expect(page.get_by_test_id("my-number")).to_be_hidden()
    await shots.take(page, "sign-in-wrong-code")
    await sign_in(page, web_server, ALICE)


async def test_a_device_signed_out_from_another_returns_to_sign_in(
    signed_in_page: SignedInPage,
) -> None:
    laptop = await signed_in_page(ALICE)
    desktop = await signed_in_page(ALICE)
    await laptop.reload()
    devices = laptop.get_by_test_id("device-item")
    await expect(devices).to_have_count(2, timeout=STATE_TIMEOUT)
    other = laptop.locator('[data-testid="device-item"][data-current="false"]')
    await other.get_by_test_id("sign-out-device").click()
    await expect(devices).to_have_count(1, timeout=STATE_TIMEOUT)
    await expect(desktop.get_by_test_id("number")).to_be_visible(timeout=STATE_TIMEOUT)
    await expect(desktop.get_by_test_id("my-number")).to_be_hidden()
    await expect(laptop.get_by_test_id("connection-status")).to_have_attribute(
        "data-state", "online"
    )


async def test_browser_calls_a_python_client_and_both_hear_each_other(
    web_server: Server, signed_in_page: SignedInPage, shots: Shots
) -> None:
    page = await signed_in_page(ALICE)
    bob = await web_server.phone(BOB)
    await page.get_by_test_id("contact-number").fill(BOB)
    await page.get_by_test_id("add-contact").click()
    contact = page.get_by_test_id("contact-item")
    await expect(contact).to_have_attribute("data-number", BOB, timeout=STATE_TIMEOUT)
    await expect(contact).to_have_attribute("data-registered", "true", timeout=STATE_TIMEOUT)
    await shots.take(page, "main-with-contact")

    await dial(page, BOB)
    incoming = await bob.incoming(timeout=10, source="tone:880")
    assert incoming.peer == ALICE
    await call_state(page, "ringing")
    await expect(page.get_by_test_id("call-panel")).to_be_visible()
    assert digits(await page.get_by_test_id("call-peer").inner_text()).endswith(digits(BOB)[-8:])
    await shots.take(page, "outgoing-ringing")

    await incoming.accept()
    await call_state(page, "connected")
    # An app-to-app call has no keypad: digits only reach phone numbers.
    await expect(page.get_by_test_id("dtmf-1")).to_be_hidden()
    await asyncio.sleep(2.0)
    before = await audio_stats(page)
    await shots.take(page, "connected-call")
    await asyncio.sleep(1.5)
    after = await audio_stats(page)
    assert after["totalAudioEnergy"] > before["totalAudioEnergy"] > 0, (before, after)
    assert after["packetsReceived"] > before["packetsReceived"], (before, after)

    await incoming.hangup()
    assert await incoming.ended(timeout=5) == "completed"
    await call_state(page, "ended")
    text = await end_reason(page, "completed")
    assert text and "_" not in text, f"the end reason is not plain text: {text!r}"
    await shots.take(page, "ended-completed")

    assert tone_fraction(heard(incoming), RATE, MIC_TONE) >= 0.8, "bob did not hear the browser"

    history = page.get_by_test_id("history-item")
    await expect(history.first).to_be_visible(timeout=STATE_TIMEOUT)
    await expect(history.first).to_have_attribute("data-missed", "false")
    # A call made just now shows today's time of day (hh:mm), not a date.
    await expect(history.first).to_contain_text(re.compile(r"Outgoing · \d{1,2}:\d{2}"))
    await shots.take(page, "main-with-history")
    await shots.take(page, "main-with-history-phone", phone=True)


async def test_python_client_calls_the_browser_which_accepts(
    web_server: Server, signed_in_page: SignedInPage, shots: Shots
) -> None:
    page = await signed_in_page(BOB)
    alice = await web_server.phone(ALICE)

    outgoing = await alice.call(BOB, source="tone:880")
    banner = page.get_by_test_id("incoming")
    await expect(banner).to_be_visible(timeout=STATE_TIMEOUT)
    shown = await page.get_by_test_id("incoming-from").inner_text()
    assert digits(shown).endswith(digits(ALICE)[-8:]), shown
    await shots.take(page, "incoming-call")
    await shots.take(page, "incoming-call-phone", phone=True)

    await page.get_by_test_id("accept").click()
    assert await outgoing.connected(timeout=10)
    await call_state(page, "connected")
    await expect(banner).to_be_hidden()
    await asyncio.sleep(3.0)
    stats = await audio_stats(page)
    assert stats["packetsReceived"] > 50, stats
    assert stats["totalAudioEnergy"] > 0, stats

    assert outgoing.media is not None
    mute = page.get_by_test_id("mute")
    outgoing.media.mark("mute")
    await mute.click()
    await expect(mute).to_have_attribute("aria-pressed", "true")
    await asyncio.sleep(0.5)
    outgoing.media.mark("muted")
    await asyncio.sleep(1.5)
    outgoing.media.mark("unmute")
    await mute.click()
    await expect(mute).to_have_attribute("aria-pressed", "false")

    await page.get_by_test_id("hangup").click()
    assert await outgoing.ended(timeout=5) == "completed"
    await call_state(page, "ended")
    before_mute = heard(outgoing, end="mute")
    assert tone_fraction(before_mute, RATE, MIC_TONE) >= 0.8, "alice did not hear the browser"
    muted = heard(outgoing, start="muted", end="unmute")
    assert tone_fraction(muted, RATE, MIC_TONE) < 0.1, "alice heard the browser while muted"


async def test_two_browser_devices_answered_elsewhere_and_declined(
    web_server: Server, signed_in_page: SignedInPage
) -> None:
    laptop = await signed_in_page(BOB)
    desktop = await signed_in_page(BOB)
    alice = await web_server.phone(ALICE)

    first = await alice.call(BOB, source="tone:880")
    for page in (laptop, desktop):
        await expect(page.get_by_test_id("incoming")).to_be_visible(timeout=STATE_TIMEOUT)
    await laptop.get_by_test_id("accept").click()
    assert await first.connected(timeout=10)
    await call_state(laptop, "connected")
    await end_reason(desktop, "answered_elsewhere")
    await expect(desktop.get_by_test_id("incoming")).to_be_hidden()
    await first.hangup()
    assert await first.ended(timeout=5) == "completed"
    await call_state(laptop, "ended")

    second = await alice.call(BOB)
    for page in (laptop, desktop):
        await expect(page.get_by_test_id("incoming")).to_be_visible(timeout=STATE_TIMEOUT)
    await desktop.get_by_test_id("decline").click()
    assert await second.ended(timeout=5) == "declined"
    await end_reason(laptop, "declined_elsewhere")
    for page in (laptop, desktop):
        await expect(page.get_by_test_id("incoming")).to_be_hidden()


async def test_connection_status_goes_offline_and_comes_back(
    web_server: Server, signed_in_page: SignedInPage
) -> None:
    from signaling.keys import PRESENCE

    page = await signed_in_page(ALICE)
    status = page.get_by_test_id("connection-status")
    await expect(status).to_have_attribute("data-state", "online")

    # The network goes away: new connections fail, and the open WebSocket is cut.
    await page.context.set_offline(True)
    for link in web_server.app[PRESENCE].links():
        await link.close(1001, "network gone")
    await expect(status).to_have_attribute("data-state", "offline", timeout=STATE_TIMEOUT)
    await asyncio.sleep(1.0)
    await expect(status).to_have_attribute("data-state", "offline")

    await page.context.set_offline(False)
    await expect(status).to_have_attribute("data-state", "online", timeout=20_000)
    assert len(web_server.app[PRESENCE]) == 1, "the page did not come back to the server"


async def test_a_call_to_a_phone_number_offers_the_keypad(
    make_server: ServerFactory, browser_user: BrowserUser, tmp_path: Path, shots: Shots
) -> None:
    sbc_port = free_port(socket.SOCK_DGRAM)
    server = await make_server(
        sip_listen="127.0.0.1:0",
        sip_sbc=(f"udp:127.0.0.1:{sbc_port}",),
        sip_accepted_sources=("127.0.0.1",),
        sip_options_interval=0.0,  # SIPp would count a keep-alive as its one call
    )
    operator = await add_operator(server)
    await add_subscriber(
        server, ALICE, operator, await add_bundle(server, operator, phone_minutes=100)
    )
    workdir = tmp_path / "sipp"
    workdir.mkdir()
    far_end = Sipp("trunk_uas_echo.xml", port=sbc_port, echo=True, workdir=workdir)
    try:
        await trunk_up(server)
        context = await browser_user()
        page = context.pages[0] if context.pages else await context.new_page()
        await sign_in(page, server, ALICE)

        await dial(page, LANDLINE)
        await call_state(page, "connected")
        keypad = page.get_by_test_id("dtmf-1")
        await expect(keypad).to_be_visible()
        await asyncio.sleep(1.0)
        await keypad.click()  # the network echoes the digit back
        await expect(page.locator("#dtmf-log")).to_have_text("Received: 1", timeout=STATE_TIMEOUT)
        await shots.take(page, "connected-phone-number")
        await shots.take(page, "connected-phone-number-phone", phone=True)

        await page.get_by_test_id("hangup").click()
        assert await end_reason(page, "completed") == "You hung up"
        await expect(keypad).to_be_hidden()
        assert await far_end.finished(timeout=10) == 0, far_end.errors()
    finally:
        far_end.stop()


async def test_a_browser_call_moves_to_a_new_peer_connection_and_goes_on(
    web_server: Server, signed_in_page: SignedInPage
) -> None:
    page = await signed_in_page(ALICE)
    bob = await web_server.phone(BOB)
    await dial(page, BOB)
    incoming = await bob.incoming(timeout=10, source="tone:880")
    await incoming.accept()
    await call_state(page, "connected")
    await asyncio.sleep(1.0)
    assert await page.evaluate("anrufDebug.renegotiate()") is True  # as on a new network
    async with asyncio.timeout(10):
        while await page.evaluate("anrufDebug.renegotiations()") < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    assert incoming.media is not None
    incoming.media.mark("moved")
    await asyncio.sleep(1.0)
    before = await audio_stats(page)  # the new peer connection's inbound audio
    await asyncio.sleep(1.5)
    after = await audio_stats(page)
    assert after["packetsReceived"] > before["packetsReceived"] > 0, (before, after)
    assert after["totalAudioEnergy"] > before["totalAudioEnergy"], (before, after)
    await call_state(page, "connected")
    await incoming.hangup()
    assert await incoming.ended(timeout=5) == "completed"
    moved = heard(incoming, start="moved")
    assert tone_fraction(moved[RATE // 2 :], RATE, MIC_TONE) >= 0.8, "bob lost the browser"
