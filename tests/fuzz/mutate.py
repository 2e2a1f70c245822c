"""A mutation fuzzer's engine: the captured corpus and the mutations applied to it.

SIP messages are mutated as bytes and as lines (bit flips, insertions, deletions,
truncation, duplicated and dropped headers, huge values, unicode, splicing two
messages); WebSocket messages as bytes of their JSON text and as JSON values
(fields dropped, duplicated, of the wrong type, huge, unicode, spliced).

Every choice comes from one ``random.Random``: a run is reproduced by its seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent / "corpus"
#: Ports in the captured SIP corpus: the trunk's and its peer's (put back at send time).
TRUNK_PORT = 5060
PEER_PORT = 5070

INTERESTING_BYTES = b' \t\r\n:;,<>"@=/\\[]?%0123456789zZ\x00\x7f\x80\xc3\xff'
INTERESTING_TEXT = [
    "",
    "0",
    "-1",
    "4294967296",
    "99999999999999999999999",
    "1e400",
    "NaN",
    "%00",
    "\x00",
    "\u202e",
    "\ufeff",
    "\U0001f4de",
    "ü" * 40,
    "\\",
    '"',
    "<sip:x@y>",
    "z9hG4bK",
    ";tag=",
    ",",
    "sip:" * 50,
]


def load_corpus(kind: str) -> list[bytes]:
    """The captured messages of one kind ("sip" or "ws"), in file order."""
    files = sorted((CORPUS / kind).iterdir())
    messages = [path.read_bytes() for path in files if path.is_file()]
    if not messages:
        raise AssertionError(f"no corpus in {CORPUS / kind}: run python -m tests.fuzz.capture")
    return messages


def huge(rng: random.Random) -> bytes:
    return rng.choice([b"A", b"9", b",", b";", b"\xc3\xbc", b" "]) * rng.choice(
        [256, 4096, 20_000, 70_000]
    )


# Byte-level mutations ---------------------------------------------------------------


def flip_bits(data: bytearray, rng: random.Random) -> None:
    for _ in range(rng.randint(1, 8)):
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)


def set_bytes(data: bytearray, rng: random.Random) -> None:
    for _ in range(rng.randint(1, 8)):
        if data:
            data[rng.randrange(len(data))] = rng.choice(INTERESTING_BYTES)


def insert_bytes(data: bytearray, rng: random.Random) -> None:
    at = rng.randint(0, len(data))
    if rng.random() < 0.1:
        data[at:at] = huge(rng)
    else:
        data[at:at] = bytes(rng.choice(INTERESTING_BYTES) for _ in range(rng.randint(1, 16)))


def delete_bytes(data: bytearray, rng: random.Random) -> None:
    if data:
        at = rng.randrange(len(data))
        del data[at : at + rng.randint(1, 64)]


def truncate(data: bytearray, rng: random.Random) -> None:
    del data[rng.randint(0, len(data)) :]


def duplicate_bytes(data: bytearray, rng: random.Random) -> None:
    if data:
        at = rng.randrange(len(data))
        end = at + rng.randint(1, 80)
        data[at:at] = data[at:end] * rng.randint(1, 4)


BYTE_MUTATIONS: list[Callable[[bytearray, random.Random], None]] = [
    flip_bits,
    set_bytes,
    insert_bytes,
    delete_bytes,
    truncate,
    duplicate_bytes,
]


def mutate_bytes(data: bytes, rng: random.Random, rounds: int = 3) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, rounds)):
        rng.choice(BYTE_MUTATIONS)(out, rng)
    return bytes(out)


# SIP: line-level mutations ----------------------------------------------------------


def _split(message: bytes) -> tuple[list[bytes], bytes]:
    head, sep, body = message.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body if sep else b""


def _join(lines: list[bytes], body: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def mutate_sip(message: bytes, rng: random.Random, corpus: list[bytes]) -> bytes:
    """One mutant of a captured SIP message."""
    choice = rng.randrange(10)
    lines, body = _split(message)
    headers = lines[1:]
    if choice == 0 and headers:  # duplicate a header, perhaps many times
        line = rng.choice(headers)
        lines.insert(rng.randint(1, len(lines)), line)
        if rng.random() < 0.2:
            lines += [line] * rng.randint(2, 300)
    elif choice == 1 and headers:  # drop a header
        del lines[rng.randint(1, len(lines) - 1)]
    elif choice == 2 and headers:  # a huge or odd value in a header
        at = rng.randint(1, len(lines) - 1)
        name = lines[at].split(b":", 1)[0]
        value = huge(rng) if rng.random() < 0.3 else rng.choice(INTERESTING_TEXT).encode()
        lines[at] = name + b": " + value
    elif choice == 3 and headers:  # change a number (CSeq, Content-Length, ...)
        at = rng.randint(1, len(lines) - 1)
        number = rng.choice([b"-1", b"0", b"4294967296", b"99999999999999", b"1e3", b"0x10"])
        lines[at] = bytes(_replace_digits(lines[at], number))
    elif choice == 4:  # the start line's parts
        parts = lines[0].split(b" ")
        parts[rng.randrange(len(parts))] = rng.choice(
            [b"", b"SIP/2.1", b"sips:x", b"tel:+49", b"INVITE", b"ACK", b"999", b"\xff"]
        )
        lines[0] = b" ".join(parts)
    elif choice == 5:  # splice with another message
        other = rng.choice(corpus)
        return message[: rng.randint(0, len(message))] + other[rng.randint(0, len(other)) :]
    elif choice == 6:  # headers of one, body of another
        _other_lines, other_body = _split(rng.choice(corpus))
        return _join(lines, other_body if rng.random() < 0.5 else body + other_body)
    elif choice == 7:  # unicode in a header value
        at = rng.randint(0, len(lines) - 1)
        lines[at] += rng.choice(INTERESTING_TEXT).encode("utf-8", "surrogatepass")
    elif choice == 8 and body:  # SDP lines
        body = mutate_sdp(body, rng)
        fixed = [line for line in lines if not line.lower().startswith((b"content-length", b"l:"))]
        return _join([*fixed, b"Content-Length: %d" % len(body)], body)
    else:
        return mutate_bytes(message, rng)
    return _join(lines, body)


def _replace_digits(line: bytes, number: bytes) -> bytes:
    out = bytearray()
    replaced = False
    i = 0
    while i < len(line):
        if not replaced and line[i : i + 1].isdigit():
            j = i
            while j < len(line) and line[j : j + 1].isdigit():
                j += 1
            out += number
            replaced = True
            i = j
        else:
            out += line[i : i + 1]
            i += 1
    return bytes(out)


SDP_JUNK = [
    b"m=audio 0 RTP/AVP 8",
    b"m=audio 99999999 RTP/AVP 8",
    b"m=audio 4000 RTP/AVP",
    b"m=audio 4000 RTP/SAVPF 111",
    b"c=IN IP4 0.0.0.0",
    b"c=IN IP6 ::1",
    b"c=IN IP4 198.51.100.1",
    b"c=IN",
    b"a=rtpmap:8 PCMA/0",
    b"a=rtpmap:101 telephone-event/1",
    b"a=rtpmap:96 opus/48000/2",
    b"a=ptime:0",
    b"a=ptime:-20",
    b"a=ptime:1e400",
    b"a=inactive",
    b"a=sendonly",
    b"m=video 4000 RTP/AVP 96",
]


def mutate_sdp(body: bytes, rng: random.Random) -> bytes:
    lines = body.split(b"\r\n")
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(3)
        at = rng.randint(0, len(lines))
        if op == 0:
            lines.insert(at, rng.choice(SDP_JUNK))
        elif op == 1 and lines:
            del lines[min(at, len(lines) - 1)]
        else:
            lines = [rng.choice(SDP_JUNK)] * rng.randint(1, 400) + lines
    return b"\r\n".join(lines)


# WebSocket: JSON-level mutations ----------------------------------------------------


def wrong_value(rng: random.Random) -> Any:
    return rng.choice(
        [
            None,
            True,
            0,
            -1,
            2**64,
            1.5,
            float("1e308"),
            "",
            [],
            {},
            ["x"],
            {"type": "ping"},
            "x" * rng.choice([65, 129, 257, 17_000]),
            rng.choice(INTERESTING_TEXT),
            "0123456789*#ABCD" * 3,
        ]
    )


def mutate_ws(message: bytes, rng: random.Random, corpus: list[bytes]) -> str | bytes:
    """One mutant of a captured WebSocket message: text, or bytes sent as text."""
    choice = rng.randrange(8)
    try:
        data: dict[str, Any] = json.loads(message)
    except ValueError:
        data = {}
    keys = list(data)
    if choice == 0 and keys:  # a field of the wrong type, huge or odd
        data[rng.choice(keys)] = wrong_value(rng)
    elif choice == 1 and keys:  # a field dropped
        del data[rng.choice(keys)]
    elif choice == 2:  # a field from another message, or an unknown one
        other = json.loads(rng.choice(corpus))
        key = rng.choice([*other, "extra", "call_id", "sdp", "to"])
        data[key] = other.get(key, wrong_value(rng))
    elif choice == 3 and "sdp" in data and isinstance(data["sdp"], str):
        sdp = mutate_sdp(data["sdp"].encode(), rng)
        data["sdp"] = sdp.decode("utf-8", "replace")
    elif choice == 4:  # duplicated keys (the last one wins in the parser)
        text = json.dumps(data)
        key = rng.choice([*keys, "type"])
        return text[:-1] + f', "{key}": {json.dumps(wrong_value(rng))}' + "}"
    elif choice == 5:  # splice with another message
        other = rng.choice(corpus)
        return message[: rng.randint(0, len(message))] + other[rng.randint(0, len(other)) :]
    elif choice == 6:  # nesting
        depth = rng.choice([10, 1000, 5000, 20_000])
        return '{"type": "ping", "id": ' + "[" * depth + "]" * depth + "}"
    else:
        return mutate_bytes(message, rng)
    return json.dumps(data, ensure_ascii=rng.random() < 0.5)
