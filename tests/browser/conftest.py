"""Real-browser fixtures: the server, Debian's Chromium with a fake microphone, signed-in pages.

Chromium runs headless through Playwright's async API with the system browser
(``/usr/bin/chromium``); each browser "user" is its own persistent context with a
fresh profile, so two contexts signed in as one number are two devices.
"""

from __future__ import annotations

import os
import re
import shutil
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.async_api import (
    BrowserContext,
    Page,
    Playwright,
    ViewportSize,
    async_playwright,
    expect,
)

from tests.conftest import TEST_CODE, Server, ServerFactory, in_ci

CHROMIUM = os.environ.get("ANRUF_CHROMIUM", "/usr/bin/chromium")
MIC_RATE = 48000
MIC_TONE = 440
DESKTOP = ViewportSize(width=1280, height=800)
PHONE = ViewportSize(width=390, height=844)

CHROMIUM_ARGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

SignedInPage = Callable[[str], Awaitable[Page]]
BrowserUser = Callable[[], Awaitable[BrowserContext]]


def digits(text: str) -> str:
    """The digits of a number as a page shows it, whatever its grouping."""
    return re.sub(r"\D", "", text)


def require_chromium() -> str:
    """Debian's Chromium: absent fails loudly in CI, and skips elsewhere."""
    if shutil.which(CHROMIUM) is None:
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


def write_tone(path: Path, frequency: int = MIC_TONE, seconds: float = 2.0) -> Path:
    """A 48 kHz mono 16-bit WAV of one tone, a whole number of cycles so the loop is seamless."""
    t = np.arange(int(MIC_RATE * seconds)) / MIC_RATE
    samples = (0.5 * 32767 * np.sin(2 * np.pi * frequency * t)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(MIC_RATE)
        out.writeframes(samples.tobytes())
    return path


@pytest.fixture
def fake_microphone(tmp_path: Path) -> Path:
    return write_tone(tmp_path / f"mic-{MIC_TONE}.wav")


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("ANRUF_SCREENSHOTS")
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        return directory
    return tmp_path_factory.mktemp("screenshots")


@dataclass
class Shots:
    """Screenshots of the screens a user sees, saved and printed by name."""

    directory: Path
    taken: list[Path] = field(default_factory=list)

    async def take(self, page: Page, name: str, *, phone: bool = False) -> Path:
        path = self.directory / f"{name}.png"
        if phone:
            await page.set_viewport_size(PHONE)
            await page.wait_for_timeout(200)  # let the layout settle
        try:
            await page.screenshot(path=str(path), full_page=True)
        finally:
            if phone:
                await page.set_viewport_size(DESKTOP)
        self.taken.append(path)
        print(f"screenshot: {path}")
        return path


@pytest.fixture
def shots(screenshots: Path) -> Shots:
    return Shots(screenshots)


@pytest.fixture
async def web_server(make_server: ServerFactory) -> Server:
    return await make_server()


@pytest.fixture
async def playwright_driver() -> AsyncIterator[Playwright]:
    require_chromium()
    async with async_playwright() as driver:
        yield driver


@pytest.fixture
async def browser_user(
    playwright_driver: Playwright, fake_microphone: Path, tmp_path: Path
) -> AsyncIterator[BrowserUser]:
    """A factory of browser users: each a Chromium with its own fresh profile."""
    contexts: list[BrowserContext] = []

    async def launch() -> BrowserContext:
        profile = tmp_path / f"profile-{len(contexts)}"
        profile.mkdir()
        context = await playwright_driver.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            viewport=DESKTOP,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={fake_microphone}"],
        )
        contexts.append(context)
        return context

    yield launch
    for context in contexts:
        await context.close()


async def sign_in(page: Page, server: Server, number: str) -> None:
    """Sign in through the UI the way a user does: number, code by SMS, verify."""
    await page.goto(f"{server.url}/?test=1")
    await page.get_by_test_id("number").fill(number)
    await page.get_by_test_id("request-code").click()
    code = page.get_by_test_id("code")
    await expect(code).to_be_visible(timeout=10_000)
    await code.fill(TEST_CODE)
    await page.get_by_test_id("verify").click()
    my_number = page.get_by_test_id("my-number")
    await expect(my_number).to_be_visible(timeout=10_000)
    assert digits(await my_number.inner_text()).endswith(digits(number)[-8:])
    await expect(page.get_by_test_id("connection-status")).to_have_attribute(
        "data-state", "online", timeout=10_000
    )


@pytest.fixture
async def signed_in_page(web_server: Server, browser_user: BrowserUser) -> SignedInPage:
    """``await signed_in_page(number)``: a new browser device signed in as ``number``."""

    async def open_page(number: str) -> Page:
        context = await browser_user()
        page = context.pages[0] if context.pages else await context.new_page()
        page.on("console", lambda message: _console(number, message.type, message.text))
        await sign_in(page, web_server, number)
        return page

    return open_page


def _console(number: str, kind: str, text: str) -> None:
    if kind in ("error", "warning"):
        print(f"[{number} console {kind}] {text}")


async def audio_stats(page: Page) -> dict[str, Any]:
    """The active call's inbound audio as the browser counts it (WebRTC getStats)."""
    stats = await page.evaluate("() => window.anrufDebug.audioStats()")
    assert isinstance(stats, dict), stats
    return stats
