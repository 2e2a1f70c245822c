"""A load-test line: one caller device and one callee device carrying calls one
after another through the real server and relay, measuring each call.

Media is lean on purpose, so that the generator is not the bottleneck:
- each endpoint is an `RtpPeer` (voice/relay/leg.py): aiortc negotiates ICE and
  DTLS-SRTP, RTP is sent and received raw, never through aiortc's encoder,
  jitter buffer or decoder;
- audio is pre-encoded once per process (`PacketLoop`) and replayed;
- one `Ticker` per event loop sends the next packet of every active stream
  every 20 ms (no task per call or per stream);
- received packets are only counted and timed; a second of them is decoded
  for the signature check, and the whole speech only on calls sampled for PESQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RtpPacket

import wire
from voice.client.signaling import SignalingClient
from voice.codecs.opus import FRAME_SAMPLES, SAMPLE_RATE, OpusDecoder
from voice.ice import ice_configuration
from voice.loadtest.measure import DirectionMeter, DirectionResult, wideband_pesq
from voice.loadtest.signature import (
    FRAME_SECONDS,
    PacketLoop,
    Signature,
    ToneProbe,
    detect,
    identify,
    signature_for,
    speech_loop,
    tone_loop,
)
from voice.relay.leg import RtpPeer
from voice.relay.ringback import ringback_cycle
from wire.call import Connected as Accepted
from wire.call import DeviceCall, Ended, Event, Progressed, RequestRefused, Ringing
from wire.reasons import DEVICE_ERROR, EndReason

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)

#: From call.invite to call.accepted on both devices.
SETUP_TIMEOUT = 10.0
#: From call.hangup to call.ended on both devices.
END_TIMEOUT = 5.0
#: Time for packets in flight to arrive after the streams stop, before the hang-up.
DRAIN = 0.15
#: Closing a peer connection (aiortc) must not hold up the line.
CLOSE_TIMEOUT = 3.0
#: Packets decoded for the signature check (1 s).
ANALYSIS_PACKETS = 50
#: A ticker that fell this far behind restarts its clock instead of bursting.
MAX_TICKER_LAG = 0.2
#: A speech direction is intact when this share of the analysed packets is the speech loop's.
SPEECH_MATCH = 0.8


class CallFailed(Exception):
    """The call could not be set up or ended as it should."""


# -- pacing -------------------------------------------------------------------------


class _Outbound:
    """One direction's sender: replays `loop` on `peer`, noting each packet in `meter`."""

    SOURCE = "load"

    def __init__(self, peer: RtpPeer, loop: PacketLoop, meter: DirectionMeter) -> None:
        self.peer = peer
        self.payloads = loop.payloads
        self.meter = meter
        self.number = 0

    async def tick(self) -> None:
        number = self.number
        payload = self.payloads[number % len(self.payloads)]
        now = time.perf_counter()
        sent = await self.peer.send(
            self.SOURCE,
            number & 0xFFFF,
            (number * FRAME_SAMPLES) & 0xFFFFFFFF,
            int(number == 0),
            payload,
        )
        # Not connected yet: nothing sent, and the stream starts when it is.
        if sent:
            self.meter.on_send(number, now)
            self.number = number + 1


class Ticker:
    """Sends the next packet of every active stream every 20 ms: one task per event loop."""

    def __init__(self) -> None:
        self._streams: dict[int, _Outbound] = {}
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.late_restarts = 0

    @classmethod
    def for_running_loop(cls) -> Ticker:
        loop = asyncio.get_running_loop()
        ticker = _tickers.get(loop)
        if ticker is None:
            ticker = _tickers[loop] = cls()
        return ticker

    def add(self, stream: _Outbound) -> None:
        self._streams[id(stream)] = stream
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def remove(self, stream: _Outbound) -> None:
        self._streams.pop(id(stream), None)

    @property
    def active(self) -> int:
        return len(self._streams)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while self._streams:
            for stream in list(self._streams.values()):
                try:
                    await stream.tick()
                except Exception:
                    logger.exception("stream send failed; stopping that stream")
                    self.remove(stream)
            self.ticks += 1
            deadline += FRAME_SECONDS
            delay = deadline - loop.time()
            if delay < -MAX_TICKER_LAG:
                self.late_restarts += 1
                deadline = loop.time()
                delay = 0.0
            await asyncio.sleep(max(0.0, delay))


_tickers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Ticker] = weakref.WeakKeyDictionary()


# -- endpoints ----------------------------------------------------------------------


class _Endpoint(RtpPeer):
    """A device's media: raw RTP in, counted by the meter of the direction it receives."""

    def __init__(
        self, pc: RTCPeerConnection, inbound: DirectionMeter, probe: ToneProbe | None = None
    ) -> None:
        super().__init__(pc)
        self.inbound = inbound
        self.recent: deque[tuple[int, bytes]] = deque(maxlen=ANALYSIS_PACKETS)
        # Until the peer's audio is recognised by its bytes, or by ear: see _listen.
        self._probe = probe
        self._probe_decoder: OpusDecoder | None = None
        self.probe_heard_at: float | None = None
        self.use_opus_only()

    async def on_rtp(self, packet: RtpPacket) -> None:
        payload = packet.payload
        if not payload or packet.payload_type != self.payload_type:
            return
        meter = self.inbound
        now = time.perf_counter()
        meter.on_receive(payload, packet.sequence_number, packet.timestamp, now)
        if payload not in meter.ignore:
            self.recent.append((packet.sequence_number, payload))
            if self._probe is not None:
                self._listen(payload, now)

    def _listen(self, payload: bytes, now: float) -> None:
        """Find the peer's audio by decoding, for relays that re-encode it.

        A forwarding relay delivers the sender's own payloads: the first one
        the meter recognises ends the probe before anything is decoded. A
        transcoding relay's packets (its ringback too) are all new bytes, so
        they are decoded until the signature is heard.
        """
        assert self._probe is not None
        if self.inbound.first_mapped_arrival is not None:
            self._probe = self._probe_decoder = None
            return
        if self._probe_decoder is None:
            self._probe_decoder = OpusDecoder()
        if self._probe.feed(self._probe_decoder.decode(payload)):
            self.probe_heard_at = now
            self._probe = self._probe_decoder = None


def _new_pc() -> RTCPeerConnection:
    # Never aiortc's default ICE servers (a public STUN server): none at all.
    return RTCPeerConnection(configuration=ice_configuration(()))


# -- signaling ----------------------------------------------------------------------


class _Inbox:
    """Messages of one device, stamped on arrival and parsed, fed to its call's machine
    (wire.call.DeviceCall) until the event a step of the call waits for."""

    def __init__(self, client: SignalingClient, name: str) -> None:
        self.client = client
        self.name = name
        self._queue: asyncio.Queue[tuple[float, wire.ServerMessage] | None] = asyncio.Queue()
        self._stash: list[tuple[float, wire.ServerMessage]] = []
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        #: How the server ended the call while a step waited for something else, if it did.
        self.ended: Ended | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                data = await self.client.receive()
                try:
                    message = wire.parse_server(data)
                except wire.ProtocolError as exc:
                    logger.warning("%s: unreadable message %s: %s", self.name, data, exc)
                    continue
                self._queue.put_nowait((time.perf_counter(), message))
        except (ConnectionError, RuntimeError) as exc:
            logger.debug("%s signaling closed: %s", self.name, exc)
        finally:
            self.closed = True
            self._queue.put_nowait(None)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def forget(self) -> None:
        """Drop what earlier calls left behind."""
        self._stash.clear()
        self.ended = None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is None:
                self._queue.put_nowait(None)
                break

    async def _next(self, position: int) -> tuple[tuple[float, wire.ServerMessage], int]:
        """The message after ``position``: stashed ones first, then new ones (stashed)."""
        if position < len(self._stash):
            return self._stash[position], position + 1
        queued = await self._queue.get()
        if queued is None:
            self._queue.put_nowait(None)
            raise CallFailed(f"{self.name}: signaling connection closed")
        self._stash.append(queued)
        return queued, len(self._stash)

    def _take(self, item: tuple[float, wire.ServerMessage]) -> None:
        self._stash.remove(item)

    async def incoming(self, call_id: str, *, timeout: float) -> DeviceCall:
        """The callee's side of call ``call_id``, from its call.incoming."""
        position = 0
        async with asyncio.timeout(timeout):
            while True:
                item, position = await self._next(position)
                at, message = item
                if isinstance(message, wire.CallIncoming) and message.call_id == call_id:
                    self._take(item)
                    return DeviceCall.incoming(message, self.client.next_id, at)

    async def until(
        self, call: DeviceCall, wanted: type[E], what: str, *, timeout: float
    ) -> tuple[float, E]:
        """(arrival perf_counter, event) of the next ``wanted`` event of ``call``.

        Raises CallFailed when the server refuses one of the call's requests, or
        ends the call meanwhile.
        """
        position = 0
        async with asyncio.timeout(timeout):
            while True:
                item, position = await self._next(position)
                at, message = item
                if not call.owns(message):
                    continue
                self._take(item)
                position -= 1
                for event in call.receive(message, at):
                    if isinstance(event, wanted):
                        return at, event
                    if isinstance(event, RequestRefused):
                        raise CallFailed(f"{self.name}: error {event.code}: {event.message}")
                    if isinstance(event, Ended) and event.reason == DEVICE_ERROR:
                        raise CallFailed(f"{self.name}: error {event.detail}: {event.message}")
                    if isinstance(event, Ended):
                        self.ended = event
                        detail = f": {event.detail}" if event.detail else ""
                        raise CallFailed(
                            f"{self.name}: call ended ({event.reason}{detail})"
                            f" while waiting for {what}"
                        )


# -- plan and result ------------------------------------------------------------------


@dataclass(frozen=True)
class CallPlan:
    index: int
    hold: float
    audio: str = "tone"  # "tone" | "speech"
    pesq: bool = False
    #: None | "silent" (the caller sends nothing) | "crossed" (it sends another call's signature)
    fault: str | None = None

    def __post_init__(self) -> None:
        if self.audio not in ("tone", "speech"):
            raise ValueError(f"audio must be 'tone' or 'speech', got {self.audio!r}")
        if self.fault not in (None, "silent", "crossed"):
            raise ValueError(f"fault must be None, 'silent' or 'crossed', got {self.fault!r}")
        if self.hold <= 0:
            raise ValueError("hold must be positive")


@dataclass
class CallResult:
    index: int
    ok: bool = False
    #: call.ended's reason; "reason/detail" for a call the server ended before it was up.
    end_reason: str | None = None
    error: str | None = None
    started_at: float = 0.0
    pdd_ms: float | None = None
    setup_ms: float | None = None
    talk_s: float | None = None
    audio: str = "tone"
    fault: str | None = None
    r_factor: float | None = None
    mos: float | None = None
    pesq: float | None = None
    directions: dict[str, DirectionResult] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "ok": self.ok,
            "end_reason": self.end_reason,
            "error": self.error,
            "started_at": self.started_at,
            "pdd_ms": self.pdd_ms,
            "setup_ms": self.setup_ms,
            "talk_s": self.talk_s,
            "audio": self.audio,
            "fault": self.fault,
            "r_factor": self.r_factor,
            "mos": self.mos,
            "pesq": self.pesq,
            "directions": {name: d.to_dict() for name, d in self.directions.items()},
        }


# -- analysis -------------------------------------------------------------------------


def decode_payloads(payloads: list[bytes]) -> np.ndarray:
    """Decode Opus payloads in order with a fresh decoder: int16 mono 48 kHz."""
    decoder = OpusDecoder()
    chunks = [decoder.decode(payload) for payload in payloads]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


def _in_sequence(packets: list[tuple[int, bytes]]) -> list[bytes]:
    if not packets:
        return []
    first = packets[0][0]
    return [payload for _, payload in sorted(packets, key=lambda p: (p[0] - first) % 65536)]


def integrity_of(expected: Signature, heard: Signature | None, index: int, direction: str) -> str:
    """One of "ok", "silent", "crossed" (another call's signature), "wrong" (anything else)."""
    if heard is None:
        return "silent"
    if heard == expected:
        return "ok"
    owner = identify(heard)
    if owner is not None and owner[0] != index:
        return "crossed"
    return "wrong"


def _check_tone(
    packets: list[tuple[int, bytes]], expected: Signature, index: int, direction: str
) -> tuple[str, str | None]:
    pcm = decode_payloads(_in_sequence(packets))
    # The decoder's first frames are its warm-up.
    heard = detect(pcm[2 * FRAME_SAMPLES :], SAMPLE_RATE)
    return integrity_of(expected, heard, index, direction), None if heard is None else str(heard)


def _check_speech(
    packets: list[tuple[int, bytes]], loop: PacketLoop, index: int
) -> tuple[str, str | None]:
    matched = sum(payload in loop.index_of for _, payload in packets)
    if packets and matched >= SPEECH_MATCH * len(packets):
        return "ok", "speech"
    pcm = decode_payloads(_in_sequence(packets))[2 * FRAME_SAMPLES :]
    # Re-encoded on the way (a transcoding relay): compare the sound itself.
    if locate_in_loop(pcm, loop) is not None:
        return "ok", "speech"
    heard = detect(pcm, SAMPLE_RATE)
    if heard is None:
        return "silent", None
    owner = identify(heard)
    return ("crossed" if owner is not None and owner[0] != index else "wrong"), str(heard)


#: Normalised cross-correlation above which decoded audio is the loop's speech.
SPEECH_CORRELATION = 0.5


def locate_in_loop(pcm: np.ndarray, loop: PacketLoop) -> int | None:
    """Sample offset in the loop where `pcm` (0.25 s or more) starts; None if not there."""
    if pcm.size < SAMPLE_RATE // 4:
        return None
    probe = np.asarray(pcm[: SAMPLE_RATE // 2], dtype=np.float64)
    reference = np.asarray(loop.pcm, dtype=np.float64)
    size = reference.size
    # Circular cross-correlation against the loop, which repeats.
    spectrum = np.fft.rfft(reference) * np.conj(np.fft.rfft(probe, n=size))
    correlation = np.fft.irfft(spectrum, n=size)
    offset = int(np.argmax(correlation))
    segment = np.roll(reference, -offset)[: probe.size]
    denominator = float(np.linalg.norm(segment) * np.linalg.norm(probe))
    if denominator == 0 or correlation[offset] / denominator < SPEECH_CORRELATION:
        return None
    return offset


def foreign_speech_pesq(payloads: list[bytes], loop: PacketLoop) -> float | None:
    """PESQ of speech a relay re-encoded: decoded in arrival order, located in the loop."""
    degraded = decode_payloads(payloads)
    offset = locate_in_loop(degraded, loop)
    if offset is None:
        return None
    repeats = degraded.size // loop.pcm.size + 2
    reference = np.roll(np.tile(loop.pcm, repeats), -offset)[: degraded.size]
    return wideband_pesq(reference, degraded)


def speech_pesq(kept: list[tuple[int, bytes]], loop: PacketLoop) -> float | None:
    """PESQ of the received speech against what was sent, frame by frame.

    Packets are placed by their packet number; a lost one leaves 20 ms of
    silence (no concealment), which PESQ rightly penalises.
    """
    if not kept:
        return None
    kept = sorted(kept)
    first, last = kept[0][0], kept[-1][0]
    decoder = OpusDecoder()
    frames = last - first + 1
    degraded = np.zeros(frames * FRAME_SAMPLES, dtype=np.int16)
    for number, payload in kept:
        samples = decoder.decode(payload)[:FRAME_SAMPLES]
        start = (number - first) * FRAME_SAMPLES
        degraded[start : start + samples.size] = samples
    positions = np.arange(first, last + 1) % len(loop)
    reference = loop.pcm.reshape(-1, FRAME_SAMPLES)[positions].reshape(-1)
    return wideband_pesq(reference, degraded)


# -- the line -------------------------------------------------------------------------


class MediaPath(Protocol):
    """Something between the endpoints and the relay, e.g. the impairment proxy."""

    def rewrite_sdp(self, sdp: str) -> str: ...

    def rewrite_client_sdp(self, sdp: str) -> str: ...


def _unchanged(sdp: str) -> str:
    return sdp


class Line:
    """One caller device and one callee device (two registered test numbers, two
    SignalingClient WebSockets) that carry calls one after another."""

    def __init__(
        self,
        server: str,
        caller_token: str,
        callee_token: str,
        callee_number: str,
        *,
        path: MediaPath | None = None,
    ) -> None:
        self.server = server
        self.callee_number = callee_number
        # Both sides' SDP go through the path (an impairment proxy), so that each
        # side only ever learns the proxy's addresses and every packet crosses it.
        self.sdp_filter: Callable[[str], str] = path.rewrite_sdp if path else _unchanged
        self.client_sdp_filter: Callable[[str], str] = (
            path.rewrite_client_sdp if path else _unchanged
        )
        self.caller = SignalingClient(server, caller_token)
        self.callee = SignalingClient(server, callee_token)
        self._caller_inbox = _Inbox(self.caller, "caller")
        self._callee_inbox = _Inbox(self.callee, "callee")
        self._busy = asyncio.Lock()

    async def open(self) -> None:
        await asyncio.gather(self.caller.connect(), self.callee.connect())
        self._caller_inbox.start()
        self._callee_inbox.start()

    async def close(self) -> None:
        await self._caller_inbox.stop()
        await self._callee_inbox.stop()
        await asyncio.gather(self.caller.close(), self.callee.close(), return_exceptions=True)

    async def run_call(self, plan: CallPlan) -> CallResult:
        """Place, answer, hold and hang up one call; never raises, never hangs."""
        return (await self.place(plan)).result

    async def place(self, plan: CallPlan) -> _Call:
        """run_call, returning the call itself (its id and signalling times too)."""
        async with self._busy:
            call = _Call(self, plan)
            try:
                async with asyncio.timeout(plan.hold + SETUP_TIMEOUT + 2 * END_TIMEOUT):
                    await call.run()
            except TimeoutError:
                call.result.error = f"timeout while {call.stage}"
            except CallFailed as exc:
                call.result.error = str(exc)
            except Exception as exc:
                logger.exception("call %d failed", plan.index)
                call.result.error = f"{call.stage}: {exc!r}"
            finally:
                await call.cleanup()
            with contextlib.suppress(Exception):
                await call.analyse()
            return call


class _Call:
    """The state of one call on a line."""

    def __init__(self, line: Line, plan: CallPlan) -> None:
        self.line = line
        self.plan = plan
        self.result = CallResult(
            index=plan.index, started_at=time.time(), audio=plan.audio, fault=plan.fault
        )
        self.stage = "starting"
        self.call_id: str | None = None
        self.ended = False
        self.streams: list[_Outbound] = []
        self.caller_peer: _Endpoint | None = None
        self.callee_peer: _Endpoint | None = None
        #: The call as each device sees it.
        self.caller_call: DeviceCall | None = None
        self.callee_call: DeviceCall | None = None

        # What each side sends, and what its peer must hear.
        self.loop_b = tone_loop(signature_for(plan.index, "b"))
        self.expected_a: PacketLoop = (
            speech_loop() if plan.audio == "speech" else tone_loop(signature_for(plan.index, "a"))
        )
        if plan.fault == "crossed":
            self.loop_a: PacketLoop | None = tone_loop(signature_for(plan.index + 1, "a"))
        elif plan.fault == "silent":
            self.loop_a = None
        else:
            self.loop_a = self.expected_a
        # Direction a: caller -> callee, measured at the callee; b: back, at the caller.
        self.meter_a = DirectionMeter(
            self.expected_a.index_of,
            len(self.expected_a),
            keep_all=plan.pesq and plan.audio == "speech",
        )
        self.meter_b = DirectionMeter(
            self.loop_b.index_of, len(self.loop_b), ignore=frozenset(ringback_cycle())
        )
        self.invited_at = 0.0
        self.accepted_at: float | None = None
        self.hung_up_at: float | None = None

    async def run(self) -> None:
        line, plan = self.line, self.plan
        caller_inbox, callee_inbox = line._caller_inbox, line._callee_inbox
        caller_inbox.forget()
        callee_inbox.forget()

        self.stage = "creating the offer"
        self.caller_peer = _Endpoint(
            _new_pc(), self.meter_b, ToneProbe(signature_for(plan.index, "b"))
        )
        pc = self.caller_peer.pc
        await pc.setLocalDescription(await pc.createOffer())

        self.stage = "inviting"
        self.invited_at = time.perf_counter()
        self.caller_call = caller = DeviceCall.place(
            line.callee_number, line.caller.next_id, self.invited_at
        )
        await line.caller.send_message(
            caller.invite(line.client_sdp_filter(pc.localDescription.sdp), self.invited_at)
        )
        _, progress = await caller_inbox.until(
            caller, Progressed, wire.CallProgress.type, timeout=SETUP_TIMEOUT
        )
        assert caller.call_id is not None
        self.call_id = call_id = caller.call_id
        await pc.setRemoteDescription(
            RTCSessionDescription(sdp=line.sdp_filter(progress.sdp), type="answer")
        )

        self.stage = f"waiting for {wire.CallIncoming.type}"
        self.callee_call = callee = await callee_inbox.incoming(call_id, timeout=SETUP_TIMEOUT)
        self.stage = f"waiting for {wire.CallRinging.type}"
        ringing_at, _ = await caller_inbox.until(
            caller, Ringing, wire.CallRinging.type, timeout=SETUP_TIMEOUT
        )
        self.result.pdd_ms = round((ringing_at - self.invited_at) * 1000.0, 3)

        self.stage = "answering"
        self.callee_peer = _Endpoint(_new_pc(), self.meter_a)
        callee_pc = self.callee_peer.pc
        await callee_pc.setRemoteDescription(
            RTCSessionDescription(sdp=line.sdp_filter(callee.offer), type="offer")
        )
        await callee_pc.setLocalDescription(await callee_pc.createAnswer())
        await line.callee.send_message(
            callee.accept(
                line.client_sdp_filter(callee_pc.localDescription.sdp), time.perf_counter()
            )
        )

        self.stage = f"waiting for {wire.CallAccepted.type}"
        accepted_at, _ = await caller_inbox.until(
            caller, Accepted, wire.CallAccepted.type, timeout=SETUP_TIMEOUT
        )
        await callee_inbox.until(callee, Accepted, wire.CallAccepted.type, timeout=SETUP_TIMEOUT)
        self.accepted_at = accepted_at
        # Analyse a second from the middle of the talk (at least 0.3 s in).
        start = accepted_at + max(0.3, plan.hold / 2 - 0.5)
        self.meter_a.window = self.meter_b.window = (start, start + 1.0)

        self.stage = "talking"
        ticker = Ticker.for_running_loop()
        if self.loop_a is not None:
            self.streams.append(_Outbound(self.caller_peer, self.loop_a, self.meter_a))
        self.streams.append(_Outbound(self.callee_peer, self.loop_b, self.meter_b))
        for stream in self.streams:
            ticker.add(stream)
        await asyncio.sleep(max(0.0, accepted_at + plan.hold - time.perf_counter()))
        self._stop_streams()
        await asyncio.sleep(DRAIN)

        self.stage = "hanging up"
        self.hung_up_at = time.perf_counter()
        hangup = caller.hangup(self.hung_up_at)
        assert hangup is not None
        await line.caller.send_message(hangup)
        _, ended = await caller_inbox.until(caller, Ended, wire.CallEnded.type, timeout=END_TIMEOUT)
        self.ended = True
        self.result.end_reason = ended.reason
        _, callee_ended = await callee_inbox.until(
            callee, Ended, wire.CallEnded.type, timeout=END_TIMEOUT
        )
        if callee_ended.reason != self.result.end_reason:
            raise CallFailed(
                f"callee saw the call end {callee_ended.reason!r}, "
                f"caller {self.result.end_reason!r}"
            )
        self.stage = "done"

    def _stop_streams(self) -> None:
        ticker = Ticker.for_running_loop()
        for stream in self.streams:
            ticker.remove(stream)

    async def cleanup(self) -> None:
        self._stop_streams()
        ended = self.line._caller_inbox.ended
        if ended is not None:  # the server ended it early: say why, detail included
            self.ended = True
            reason, detail = ended.reason, ended.detail
            self.result.end_reason = f"{reason}/{detail}" if detail else reason
        caller = self.caller_call
        if caller is not None and self.call_id is not None and not self.ended:
            # A failed call must not stay up on the server: hang it up, ignore the reply.
            with contextlib.suppress(Exception):
                hangup = caller.hangup(time.perf_counter())
                if hangup is not None:
                    await self.line.caller.send_message(hangup)
        for peer in (self.caller_peer, self.callee_peer):
            if peer is None:
                continue
            peer.closed = True
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await peer.pc.close()
            except Exception as exc:
                logger.debug("closing a peer connection: %r", exc)

    async def analyse(self) -> None:
        result, plan = self.result, self.plan
        if self.hung_up_at is not None and self.accepted_at is not None:
            result.talk_s = round(self.hung_up_at - self.accepted_at, 3)
        first_b = self.meter_b.first_mapped_arrival
        if first_b is None and self.caller_peer is not None:
            first_b = self.caller_peer.probe_heard_at
        if first_b is not None and self.invited_at:
            result.setup_ms = round((first_b - self.invited_at) * 1000.0, 3)

        a, b = self.meter_a.result(), self.meter_b.result()
        expected_a_sig = signature_for(plan.index, "a")
        expected_b_sig = signature_for(plan.index, "b")
        a.signature_expected = "speech" if plan.audio == "speech" else str(expected_a_sig)
        b.signature_expected = str(expected_b_sig)
        packets_a = self._analysis_packets(self.meter_a, self.callee_peer)
        packets_b = self._analysis_packets(self.meter_b, self.caller_peer)
        if plan.audio == "speech":
            a.integrity, a.signature_heard = _check_speech(packets_a, self.expected_a, plan.index)
        else:
            a.integrity, a.signature_heard = _check_tone(packets_a, expected_a_sig, plan.index, "a")
        b.integrity, b.signature_heard = _check_tone(packets_b, expected_b_sig, plan.index, "b")
        if plan.pesq and plan.audio == "speech":
            if self.meter_a.kept:
                kept = list(self.meter_a.kept)
                a.pesq = await asyncio.to_thread(speech_pesq, kept, self.expected_a)
            elif self.meter_a.kept_foreign:
                foreign = list(self.meter_a.kept_foreign)
                a.pesq = await asyncio.to_thread(foreign_speech_pesq, foreign, self.expected_a)
            result.pesq = a.pesq
        result.directions = {"a": a, "b": b}
        ratings = [d.r_factor for d in (a, b)]
        if all(r is not None for r in ratings):
            result.r_factor = min(r for r in ratings if r is not None)
            moses = [d.mos for d in (a, b) if d.mos is not None]
            result.mos = min(moses) if moses else None
        result.ok = (
            result.error is None
            and result.end_reason == EndReason.COMPLETED
            and a.integrity == "ok"
            and b.integrity == "ok"
        )

    @staticmethod
    def _analysis_packets(meter: DirectionMeter, peer: _Endpoint | None) -> list[tuple[int, bytes]]:
        window = meter.window_payloads
        if len(window) >= ANALYSIS_PACKETS // 2:
            return window[:ANALYSIS_PACKETS]
        return list(peer.recent) if peer is not None else []
