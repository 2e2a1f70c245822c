"""SIP messages (RFC 3261 §7, §20, §25): parser, serializer and builders. Sans-I/O.

``parse_message(data)`` parses one whole message (a UDP datagram); ``StreamParser``
frames messages out of a byte stream (TCP) by their Content-Length. Anything that is
not a well-formed message raises ``ParseError`` (never another exception), which
carries the status to answer with (400, 416, 505, 513) and, when the start line and
the headers could be read, the partial message so that a response can be built.

Header names are case-insensitive and compact forms (``i f t v m l c k s`` …) are
expanded to their long names. Values of list headers (Via, Route, Contact, Allow …)
are split at commas, so each value is its own entry; folded lines are unfolded.
Structured values (URIs, name-addr, Via, CSeq) are parsed on access.
"""

from __future__ import annotations

import abc
import re
import secrets
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

SIP_VERSION = "SIP/2.0"
#: RFC 3261 §8.1.1.7: every branch we make starts with the magic cookie.
MAGIC_COOKIE = "z9hG4bK"
DEFAULT_MAX_MESSAGE_BYTES = 65535
DEFAULT_MAX_HEADERS = 100

COMPACT_FORMS = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_CANONICAL = {
    name.lower(): name
    for name in (
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Authentication-Info",
        "Authorization",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "Date",
        "Error-Info",
        "Expires",
        "From",
        "In-Reply-To",
        "Max-Forwards",
        "Min-Expires",
        "MIME-Version",
        "Organization",
        "P-Asserted-Identity",
        "P-Preferred-Identity",
        "Priority",
        "Privacy",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "Reason",
        "Record-Route",
        "Reply-To",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "RAck",
        "Server",
        "Session-Expires",
        "Subject",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "Warning",
        "WWW-Authenticate",
        *COMPACT_FORMS.values(),
    )
}

#: Headers whose values are comma-separated lists (RFC 3261 §7.3.1); split on parse.
LIST_HEADERS = frozenset(
    {
        "via",
        "route",
        "record-route",
        "contact",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "allow-events",
        "content-encoding",
        "reason",
    }
)

REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
#: RFC 3986 §3.1: a scheme name; anything else before the ':' is not a URI at all.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*\Z")
_DIGITS = re.compile(r"[0-9]{1,10}\Z")
_VERSION = re.compile(r"[0-9]+\.[0-9]+\Z")
#: Headers that a message carries once (RFC 3261 §7.3.1, §20; RFC 4475 §3.3.8).
SINGLE_HEADERS = ("To", "From", "Call-ID", "CSeq", "Max-Forwards")
_URI_FORBIDDEN = re.compile(r'[ \t<>"]')
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_URI_SCHEMES = ("sip", "sips", "tel")
Params = tuple[tuple[str, str | None], ...]


class ParseError(ValueError):
    """A message that is not well-formed SIP.

    ``status`` is the response code that fits (400, 416, 505 or 513); ``partial``
    is the message as far as it could be read (start line and headers), or None.
    """

    def __init__(
        self, reason: str, *, status: int = 400, partial: Request | Response | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.partial = partial

    @property
    def answerable(self) -> bool:
        """Whether a response can be sent: a request (not ACK) with a Via to send it
        along and a CSeq for the peer to match it by. From, To and Call-ID are copied
        when present: a request that lacks them still gets its 400 (RFC 4475 §3.3.1)."""
        request = self.partial
        if not isinstance(request, Request) or request.method == "ACK":
            return False
        if "CSeq" not in request.headers:
            return False
        try:
            return _reply_via(request) is not None
        except ParseError:
            return False


def canonical_name(name: str) -> str:
    """The long, conventionally spelled form of a header name (compact forms expanded)."""
    known = _NAMES.get(name)
    if known is not None:
        return known
    lower = name.lower()
    if len(lower) == 1 and lower in COMPACT_FORMS:
        canonical = COMPACT_FORMS[lower]
    else:
        canonical = _CANONICAL.get(lower, name)
    if len(_NAMES) < 4096:
        _NAMES[name] = canonical
    return canonical


def _key(name: str) -> str:
    """The lookup key of a header name: its canonical form, lower-cased."""
    key = _KEYS.get(name)
    if key is None:
        key = canonical_name(name).lower()
        if len(_KEYS) < 4096:
            _KEYS[name] = key
    return key


#: Caches of names seen (bounded: a peer can send any names).
_NAMES: dict[str, str] = {}
_KEYS: dict[str, str] = {}


# Small grammar helpers --------------------------------------------------------------


def split_quoted(text: str, separator: str) -> list[str]:
    """Split at ``separator`` outside quoted strings and <...>; parts are stripped."""
    if separator not in text:
        return [text.strip()]
    if '"' not in text and "<" not in text:
        return [part.strip() for part in text.split(separator)]
    parts: list[str] = []
    start = 0
    quoted = False
    angle = False
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            angle = True
        elif ch == ">":
            angle = False
        elif ch == separator and not angle:
            parts.append(text[start:i].strip())
            start = i + 1
        i += 1
    if quoted:
        raise ParseError(f"unterminated quoted string in {text!r}")
    parts.append(text[start:].strip())
    return parts


def parse_params(parts: Iterable[str]) -> Params:
    """``name[=value]`` items (already split at ';') into a tuple; names lower-cased.
    An empty item (``;;``, a ';' at the end) is not a parameter (RFC 4475 §3.1.2.1)."""
    params: list[tuple[str, str | None]] = []
    for raw in parts:
        part = raw.strip()
        if not part:
            raise ParseError("empty parameter (';' with nothing after it)")
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not _TOKEN.match(name):
            raise ParseError(f"bad parameter {part!r}")
        params.append((name, value.strip() if sep else None))
    return tuple(params)


def format_params(params: Params) -> str:
    return "".join(f";{name}" if value is None else f";{name}={value}" for name, value in params)


def _param(params: Params, name: str) -> str | None:
    for key, value in params:
        if key == name:
            return value
    return None


def _has_param(params: Params, name: str) -> bool:
    return any(key == name for key, _ in params)


def _set_param(params: Params, name: str, value: str | None) -> Params:
    kept = tuple((k, v) for k, v in params if k != name)
    return (*kept, (name, value))


def unescape(text: str) -> str:
    """``%HH`` escapes decoded once (RFC 3261 §25.1, RFC 3986 §2.1): ``%25%34%31`` is
    ``%41``, never ``A``. Only for the parts of a URI whose grammar has "escaped"."""
    return urllib.parse.unquote(text, errors="surrogateescape") if "%" in text else text


def _parse_port(text: str, where: str) -> int:
    if not text.isdigit() or len(text) > 5 or not 0 < int(text) < 65536:
        raise ParseError(f"bad port in {where!r}")
    return int(text)


def _split_hostport(text: str, where: str) -> tuple[str, int | None]:
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ParseError(f"unterminated IPv6 reference in {where!r}")
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ParseError(f"bad host in {where!r}")
        return host, _parse_port(rest[1:], where)
    host, sep, port = text.partition(":")
    if not host or any(c in host for c in ' \t<>"@'):
        raise ParseError(f"bad host in {where!r}")
    return host, (_parse_port(port, where) if sep else None)


# URIs, addresses, Via, CSeq --------------------------------------------------------


@dataclass(frozen=True)
class URI:
    """A SIP, SIPS or tel URI (RFC 3261 §19.1, RFC 3966). For tel, ``user`` is the number."""

    scheme: str = "sip"
    user: str | None = None
    host: str = ""
    port: int | None = None
    params: Params = ()
    password: str | None = None
    #: The ``?headers`` part, without the '?', kept as written.
    headers: str = ""

    @classmethod
    def parse(cls, text: str) -> URI:
        text = text.strip()
        scheme, sep, rest = text.partition(":")
        if not sep or not rest or not _SCHEME.match(scheme):
            raise ParseError(f"not a URI: {text!r}")
        scheme = scheme.lower()
        if scheme not in _URI_SCHEMES:
            raise ParseError(f"unsupported URI scheme {scheme!r}", status=416)
        if _URI_FORBIDDEN.search(rest):
            raise ParseError(f"bad character in URI {text!r}")
        if scheme == "tel":
            rest, _, headers = rest.partition("?")
            number, *params = rest.split(";")
            if not number:
                raise ParseError(f"tel URI without a number: {text!r}")
            return cls(scheme, number, "", None, parse_params(params), None, headers)
        user: str | None = None
        password: str | None = None
        # The userinfo ends at the last '@': no other part of a SIP URI holds one
        # unescaped (RFC 3261 §25.1), while the user part may hold ';', '?' and ','
        # (RFC 4475 §3.1.1.2 and §3.1.1.9).
        at = rest.rfind("@")
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
            user, sep, pw = userinfo.partition(":")
            password = pw if sep else None
            if not user:
                raise ParseError(f"empty user part in {text!r}")
        rest, _, headers = rest.partition("?")
        hostport, *params = rest.split(";")
        host, port = _split_hostport(hostport, text)
        return cls(scheme, user, host, port, parse_params(params), password, headers)

    def __str__(self) -> str:
        if self.scheme == "tel":
            text = f"tel:{self.user}{format_params(self.params)}"
        else:
            userinfo = ""
            if self.user is not None:
                userinfo = self.user
                if self.password is not None:
                    userinfo += f":{self.password}"
                userinfo += "@"
            port = f":{self.port}" if self.port is not None else ""
            text = f"{self.scheme}:{userinfo}{self.host}{port}{format_params(self.params)}"
        return f"{text}?{self.headers}" if self.headers else text

    @property
    def unescaped_user(self) -> str | None:
        """The user part with its ``%HH`` escapes decoded: ``sip:%75se%72@h`` is ``user``."""
        return None if self.user is None else unescape(self.user)

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    def has_param(self, name: str) -> bool:
        return _has_param(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> URI:
        return replace(self, params=_set_param(self.params, name, value))

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self.port}" if self.port is not None else self.host


@dataclass(frozen=True)
class Address:
    """name-addr or addr-spec with header parameters (From, To, Contact, Route …)."""

    uri: URI
    display_name: str | None = None
    params: Params = ()

    @classmethod
    def parse(cls, text: str) -> Address:
        text = text.strip()
        if not text:
            raise ParseError("empty address")
        display: str | None = None
        if text.startswith('"'):
            quoted = _QUOTED.match(text)
            if quoted is None:
                raise ParseError(f"unterminated display name in {text!r}")
            display = quoted.group(1)
            if "\\" in display:
                display = re.sub(r"\\(.)", r"\1", display)
            text = text[quoted.end() :].lstrip()
            if not text.startswith("<"):
                raise ParseError(f"display name without <URI> in {text!r}")
        lt = text.find("<")
        if lt >= 0:
            gt = text.find(">", lt)
            if gt < 0:
                raise ParseError(f"unterminated <URI> in {text!r}")
            if display is None and text[:lt].strip():
                display = text[:lt].strip()
                # Unquoted, a display name is tokens (RFC 3261 §25.1, RFC 4475 §3.1.2.15).
                if not all(_TOKEN.match(word) for word in display.split()):
                    raise ParseError(f"display name {display!r} needs quotes")
            inner = text[lt + 1 : gt]
            if inner != inner.strip():
                # LAQUOT addr-spec RAQUOT: no LWS inside (RFC 4475 §3.1.2.14).
                raise ParseError(f"spaces inside <URI> in {text!r}")
            uri = URI.parse(inner)
            rest = text[gt + 1 :].strip()
            if rest and not rest.startswith(";"):
                raise ParseError(f"unexpected text after <URI> in {text!r}")
            return cls(uri, display, parse_params(split_quoted(rest, ";")[1:]) if rest else ())
        # addr-spec: parameters after the URI belong to the header, not the URI (§20).
        uri_text, *params = text.split(";")
        if any(c in uri_text for c in "?,"):
            # §20.10: such a URI must be in <> (RFC 4475 §3.1.2.13).
            raise ParseError(f"a URI with '?' or ',' must be enclosed in <>: {text!r}")
        return cls(URI.parse(uri_text), None, parse_params(params))

    def __str__(self) -> str:
        name = ""
        if self.display_name:
            escaped = self.display_name.replace("\\", "\\\\").replace('"', '\\"')
            name = f'"{escaped}" '
        return f"{name}<{self.uri}>{format_params(self.params)}"

    @property
    def tag(self) -> str | None:
        return _param(self.params, "tag")

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    def with_tag(self, tag: str) -> Address:
        return replace(self, params=_set_param(self.params, "tag", tag))


@dataclass(frozen=True)
class Via:
    """One Via entry: ``SIP/2.0/UDP host:port;branch=…;received=…;rport``."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    #: The SIP version of the sent-protocol; a message in another version is answered
    #: 505 along its Via (RFC 4475 §3.1.2.16), so the Via must still be read.
    version: str = "2.0"

    @classmethod
    def parse(cls, text: str, *, lenient: bool = False) -> Via:
        """One Via value. ``lenient``: empty parameters (``;;``) are skipped rather
        than refused, to send a 400 back along a Via that is itself malformed."""
        protocol, sep, rest = text.strip().partition("/")
        version, sep2, rest = rest.partition("/")
        version = version.strip()
        if not sep or not sep2 or protocol.strip().upper() != "SIP" or not _VERSION.match(version):
            raise ParseError(f"bad Via {text!r}")
        rest = rest.lstrip()
        transport, _, sent_by = rest.partition(" ")
        if not transport or not _TOKEN.match(transport):
            raise ParseError(f"bad Via transport in {text!r}")
        hostport, *params = sent_by.split(";")
        host, port = _split_hostport(hostport, text)
        if lenient:
            params = [p for p in params if p.strip()]
        return cls(transport.upper(), host, port, parse_params(params), version)

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/{self.version}/{self.transport} {self.host}{port}{format_params(self.params)}"

    @property
    def branch(self) -> str | None:
        return _param(self.params, "branch")

    @property
    def rfc3261(self) -> bool:
        """The branch starts with the magic cookie: the sender follows RFC 3261
        (§8.1.1.7). Without it the request comes from an RFC 2543 element, whose
        transactions and dialogs are matched the older way (§17.2.3, §12.1.1)."""
        return (self.branch or "").startswith(MAGIC_COOKIE)

    @property
    def received(self) -> str | None:
        return _param(self.params, "received")

    @property
    def rport(self) -> int | None:
        value = _param(self.params, "rport")
        return int(value) if value and value.isdigit() else None

    @property
    def sent_by(self) -> str:
        return f"{self.host}:{self.port if self.port is not None else 5060}".lower()

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    def has_param(self, name: str) -> bool:
        return _has_param(self.params, name)

    def with_param(self, name: str, value: str | None) -> Via:
        return replace(self, params=_set_param(self.params, name, value))


@dataclass(frozen=True)
class CSeq:
    seq: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        number, _, method = text.strip().partition(" ")
        method = method.strip()
        if not number.isdigit() or len(number) > 10 or int(number) >= 2**31:
            raise ParseError(f"bad CSeq {text!r}")
        if not _TOKEN.match(method):
            raise ParseError(f"bad CSeq method in {text!r}")
        return cls(int(number), method)

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


# Where requests come from and responses go -----------------------------------------


@dataclass(frozen=True)
class SipTarget:
    """A transport address: ``udp:127.0.0.1:5070`` (IPv6 hosts in brackets)."""

    transport: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> SipTarget:
        transport, sep, hostport = text.strip().partition(":")
        transport = transport.lower()
        if not sep or transport not in ("udp", "tcp"):
            raise ValueError(f"{text!r}: expected udp:HOST:PORT or tcp:HOST:PORT")
        try:
            host, port = _split_hostport(hostport, text)
        except ParseError as exc:
            raise ValueError(f"{text!r}: {exc.reason}") from None
        return cls(transport, host.strip("[]"), port if port is not None else 5060)

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


def stamp_received(request: Request, source: SipTarget) -> None:
    """RFC 3261 §18.2.1 and RFC 3581: note the source address in the top Via."""
    via = request.top_via
    changed = via
    if via.host.strip("[]") != source.host:
        changed = changed.with_param("received", source.host)
    if via.has_param("rport") and via.rport is None:
        changed = changed.with_param("received", source.host).with_param("rport", str(source.port))
    if changed is not via:
        request.headers.replace_first("Via", str(changed))


def response_destination(request: Request, source: SipTarget) -> SipTarget:
    """Where a response to ``request`` goes (RFC 3261 §18.2.2, RFC 3581): the same
    connection for TCP; for UDP the source address, at the rport if asked for, else
    at the Via's sent-by port."""
    if source.reliable:
        return source
    via = _reply_via(request)
    if via.has_param("rport"):
        return source
    return SipTarget(source.transport, source.host, via.port or 5060)


def _reply_via(request: Request) -> Via:
    """The top Via as far as a response can be routed by it (empty parameters skipped)."""
    value = request.headers.get("Via")
    if value is None:
        raise ParseError("missing Via")
    return Via.parse(value, lenient=True)


# Headers and messages -----------------------------------------------------------------


class Headers:
    """An ordered, case-insensitive multi-map of header names to (unparsed) values."""

    __slots__ = ("_items", "_keys")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        self._keys: list[str] = []  # _key() of each entry's name, in step with _items
        for name, value in items:
            self.add(name, value)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in self._keys

    def get(self, name: str) -> str | None:
        key = _key(name)
        for i, k in enumerate(self._keys):
            if k == key:
                return self._items[i][1]
        return None

    def get_all(self, name: str) -> list[str]:
        key = _key(name)
        return [self._items[i][1] for i, k in enumerate(self._keys) if k == key]

    def add(self, name: str, value: str) -> None:
        self._items.append((canonical_name(name), value))
        self._keys.append(_key(name))

    def add_first(self, name: str, value: str) -> None:
        """Insert before the first entry of ``name`` (or at the top): a new Via."""
        key = _key(name)
        i = self._keys.index(key) if key in self._keys else 0
        self._items.insert(i, (canonical_name(name), value))
        self._keys.insert(i, key)

    def set(self, name: str, value: str) -> None:
        """Replace every entry of ``name`` with one (in the place of the first)."""
        key = _key(name)
        if key not in self._keys:
            self.add(name, value)
            return
        first = self._keys.index(key)
        self._items[first] = (canonical_name(name), value)
        keep = [i for i, k in enumerate(self._keys) if k != key or i == first]
        self._items = [self._items[i] for i in keep]
        self._keys = [self._keys[i] for i in keep]

    def replace_first(self, name: str, value: str) -> None:
        key = _key(name)
        if key not in self._keys:
            self.add(name, value)
            return
        i = self._keys.index(key)
        self._items[i] = (self._items[i][0], value)

    def remove(self, name: str) -> None:
        key = _key(name)
        keep = [i for i, k in enumerate(self._keys) if k != key]
        self._items = [self._items[i] for i in keep]
        self._keys = [self._keys[i] for i in keep]

    def copy(self) -> Headers:
        headers = Headers()
        headers._items = list(self._items)
        headers._keys = list(self._keys)
        return headers

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class _Message(abc.ABC):
    headers: Headers
    body: bytes

    @abc.abstractmethod
    def _start_line(self) -> str: ...

    def encode(self) -> bytes:
        """The message on the wire; Content-Length is always written and always right."""
        lines = [self._start_line()]
        lines.extend(f"{n}: {v}" for n, v in self.headers if n != "Content-Length")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def call_id(self) -> str:
        value = self.headers.get("Call-ID")
        if not value:
            raise ParseError("missing Call-ID")
        return value

    @property
    def cseq(self) -> CSeq:
        value = self.headers.get("CSeq")
        if value is None:
            raise ParseError("missing CSeq")
        return CSeq.parse(value)

    @property
    def from_addr(self) -> Address:
        value = self.headers.get("From")
        if value is None:
            raise ParseError("missing From")
        return Address.parse(value)

    @property
    def to_addr(self) -> Address:
        value = self.headers.get("To")
        if value is None:
            raise ParseError("missing To")
        return Address.parse(value)

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via:
        value = self.headers.get("Via")
        if value is None:
            raise ParseError("missing Via")
        return Via.parse(value)

    @property
    def contact(self) -> Address | None:
        value = self.headers.get("Contact")
        if value is None or value.strip() == "*":
            return None
        return Address.parse(value)

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("Content-Type")
        return value.split(";")[0].strip().lower() if value else None


@dataclass(eq=False)
class Request(_Message):
    method: str
    uri: URI
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


@dataclass(eq=False)
class Response(_Message):
    status: int
    reason: str = ""
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def _start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


Message = Request | Response


# Parsing ------------------------------------------------------------------------------


_ZERO_Q = re.compile(r"q\s*=\s*0(\.0*)?", re.IGNORECASE)


def _head_end(data: bytes | bytearray, start: int = 0, stop: int | None = None) -> tuple[int, int]:
    """(offset of the blank line, its length), or (-1, 0); searched in data[start:stop]."""
    stop = len(data) if stop is None else stop
    crlf = data.find(b"\r\n\r\n", start, stop)
    lf = data.find(b"\n\n", start, stop)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, 4
    if lf >= 0:
        if lf > 0 and data[lf - 1 : lf] == b"\r":
            return lf - 1, 3
        return lf, 2
    return -1, 0


def is_response(data: bytes | bytearray) -> bool:
    """Whether unparsed bytes are a response: a Status-Line starts with the SIP
    version, a Request-Line with the method (RFC 3261 §7.1, §7.2). Keep-alive CRLFs
    before the message (RFC 5626 §3.5.1) are skipped."""
    return data.lstrip(b"\r\n").startswith(b"SIP/")


def accepts(request: Request, media_type: str) -> bool:
    """Whether a response to ``request`` may carry a body of ``media_type`` (RFC 3261
    §20.1): without Accept only application/sdp; an empty Accept, no type at all; a
    range with q=0 is refused (RFC 2616 §14.1)."""
    values = request.headers.get_all("Accept")
    media_type = media_type.lower()
    if not values:
        return media_type == "application/sdp"
    wanted = {"*/*", media_type.partition("/")[0] + "/*", media_type}
    for value in values:
        for item in split_quoted(value, ","):
            name, *params = item.split(";")
            refused = any(_ZERO_Q.fullmatch(p.strip()) for p in params)
            if name.strip().lower() in wanted and not refused:
                return True
    return False


def _parse_start_line(line: str) -> Request | Response:
    if line.startswith("SIP/"):
        version, _, rest = line.partition(" ")
        if version != SIP_VERSION:
            raise ParseError(f"unsupported version {version!r}", status=505)
        code, _, reason = rest.partition(" ")
        if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
            raise ParseError(f"bad status line {line!r}")
        return Response(int(code), reason.strip())
    parts = line.split(" ")
    if len(parts) != 3:
        raise ParseError(f"bad request line {line!r}")
    method, uri, version = parts
    if not _TOKEN.match(method):
        raise ParseError(f"bad method in {line!r}")
    if version != SIP_VERSION:
        if version.upper().startswith("SIP/"):
            raise ParseError(f"unsupported version {version!r}", status=505)
        raise ParseError(f"bad request line {line!r}")
    request_uri = URI.parse(uri)
    if request_uri.headers:
        # RFC 3261 §19.1.1, Table 1: headers are not allowed in a Request-URI.
        raise ParseError(f"headers in the Request-URI {uri!r}")
    return Request(method, request_uri)


def _parse_head(head: bytes, max_headers: int) -> Request | Response:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("message head is not UTF-8") from None
    lines = text.replace("\r\n", "\n").split("\n")
    start_error: ParseError | None = None
    try:
        message = _parse_start_line(lines[0])
    except ParseError as exc:
        # A request whose start line is wrong (another SIP version, a URI scheme we do
        # not know, stray spaces, a bad Request-URI) can still be answered (505, 416,
        # 400; RFC 4475 §3.1.2.7-11, §3.1.2.16): read its headers for the response.
        method = lines[0].split(" ", 1)[0]
        if lines[0].startswith("SIP/") or not _TOKEN.match(method):
            raise
        message = Request(method, URI())
        start_error = exc
    items: list[tuple[str, str]] = []
    name = ""
    value = ""
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if not name:
                raise ParseError("continuation line before any header", partial=message)
            value += " " + line.strip()
            continue
        if name:
            items.append((name, value))
        raw_name, sep, raw_value = line.partition(":")
        name = raw_name.rstrip(" \t")
        if not sep or not _TOKEN.match(name):
            message.headers = Headers(items)
            raise ParseError(f"bad header line {line[:80]!r}", partial=message)
        value = raw_value.strip()
    if name:
        items.append((name, value))
    headers = Headers()
    entries = headers._items
    keys = headers._keys
    for name, value in items:
        canonical = canonical_name(name)
        key = _key(name)
        if key in LIST_HEADERS and "," in value:
            try:
                values = split_quoted(value, ",")
            except ParseError:
                values = [value]
            for v in values:
                if v:
                    entries.append((canonical, v))
                    keys.append(key)
        else:
            entries.append((canonical, value))
            keys.append(key)
        if len(entries) > max_headers:
            message.headers = headers
            raise ParseError(f"more than {max_headers} headers", partial=message)
    message.headers = headers
    if start_error is not None:
        raise ParseError(start_error.reason, status=start_error.status, partial=message)
    return message


def _validate(message: Request | Response) -> None:
    """The headers every request and response needs (RFC 3261 §8.1.1)."""
    missing = [n for n in ("To", "From", "Call-ID", "CSeq") if message.headers.get(n) is None]
    if missing:
        raise ParseError(f"missing {', '.join(missing)}", partial=message)
    for name in SINGLE_HEADERS:
        if len(message.headers.get_all(name)) > 1:
            raise ParseError(f"more than one {name}", partial=message)
    try:
        # Parsed to check them: the Via responses are routed by, From and To.
        _ = (message.top_via, message.from_addr, message.to_addr)
        cseq = message.cseq
    except ParseError as exc:
        raise ParseError(exc.reason, status=exc.status, partial=message) from None
    if isinstance(message, Request) and cseq.method != message.method:
        raise ParseError("CSeq method does not match the request method", partial=message)
    if message.top_via.version != "2.0":
        raise ParseError("top Via is not SIP/2.0", partial=message)
    max_forwards = message.headers.get("Max-Forwards")
    # 1*DIGIT in 0-255, leading zeros allowed (RFC 3261 §20.22, RFC 4475 §3.1.1.1).
    if max_forwards is not None and (not _DIGITS.match(max_forwards) or int(max_forwards) > 255):
        raise ParseError(f"bad Max-Forwards {max_forwards!r}", partial=message)
    if isinstance(message, Request):
        try:
            for value in message.headers.get_all("Contact"):
                if value.strip() != "*":
                    Address.parse(value)
        except ParseError as exc:
            raise ParseError(
                f"bad Contact: {exc.reason}", status=exc.status, partial=message
            ) from None


def _content_length(message: Request | Response) -> int | None:
    values = message.headers.get_all("Content-Length")
    if not values:
        return None
    if len(set(values)) > 1:
        raise ParseError("conflicting Content-Length headers", partial=message)
    value = values[0]
    if not value.isdigit() or len(value) > 9:
        raise ParseError(f"bad Content-Length {value!r}", partial=message)
    return int(value)


def _partial(data: bytes, max_headers: int) -> Request | Response | None:
    """The start line and the complete header lines of a broken message, if any."""
    end, _ = _head_end(data)
    if end < 0:
        end = data.rfind(b"\n")  # cut off the incomplete last line
        if end < 0:
            return None
    try:
        return _parse_head(data[:end], max_headers)
    except ParseError as exc:
        return exc.partial


def parse_message(
    data: bytes,
    *,
    max_size: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_headers: int = DEFAULT_MAX_HEADERS,
) -> Request | Response:
    """Parse one whole message (a datagram). Raises ParseError, nothing else."""
    if len(data) > max_size:
        raise ParseError(
            f"message of {len(data)} bytes is larger than {max_size}",
            status=513,
            partial=_partial(data[:max_size], max_headers),
        )
    data = data.lstrip(b"\r\n")
    if not data:
        raise ParseError("empty message")
    end, blank = _head_end(data)
    if end < 0:
        raise ParseError("no blank line after the headers", partial=_partial(data, max_headers))
    message = _parse_head(data[:end], max_headers)
    body = data[end + blank :]
    length = _content_length(message)
    if length is not None:
        if length > len(body):
            raise ParseError("body shorter than Content-Length", partial=message)
        body = body[:length]
    message.body = body
    _validate(message)
    return message


class StreamParser:
    """Frames messages out of a byte stream (TCP), RFC 3261 §18.3.

    ``feed`` returns the messages completed by the bytes given, in order; a message
    that is framed correctly but not well-formed comes back as its ParseError (the
    stream goes on). When the framing itself is lost (no Content-Length, a head or
    message over the size bound, bad bytes) ``feed`` raises ParseError and the
    parser must not be used again: close the connection.
    """

    def __init__(
        self, *, max_size: int = DEFAULT_MAX_MESSAGE_BYTES, max_headers: int = DEFAULT_MAX_HEADERS
    ) -> None:
        self.max_size = max_size
        self.max_headers = max_headers
        self._buffer = bytearray()
        self._need: int | None = None  # total length of the message being read
        # Bytes of the buffer already searched for the end of the head: a head that
        # arrives a byte at a time is searched once, not once per byte.
        self._searched = 0

    @property
    def in_message(self) -> bool:
        """Whether bytes of an unfinished message are held (keep-alive CRLFs between
        messages are not a message): the transport times how long one takes."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[Request | Response | ParseError]:
        self._buffer += data
        out: list[Request | Response | ParseError] = []
        while True:
            if self._need is None:
                # Keep-alive CRLFs between messages (RFC 5626 §3.5.1) are skipped.
                while self._buffer[:2] == b"\r\n" or self._buffer[:1] == b"\n":
                    del self._buffer[: 2 if self._buffer[:1] == b"\r" else 1]
                    self._searched = 0
                end, blank = _head_end(
                    self._buffer,
                    max(0, self._searched - 3),
                    min(len(self._buffer), self.max_size + 4),
                )
                if end < 0:
                    if len(self._buffer) > self.max_size:
                        raise ParseError(f"message head larger than {self.max_size}", status=513)
                    self._searched = len(self._buffer)
                    return out
                self._searched = 0
                head = bytes(self._buffer[:end])
                try:
                    message = _parse_head(head, self.max_headers)
                    length = _content_length(message)
                except ParseError as exc:
                    raise ParseError(exc.reason, status=exc.status, partial=exc.partial) from None
                if length is None:
                    raise ParseError("no Content-Length on a stream", partial=message)
                self._need = end + blank + length
                if self._need > self.max_size:
                    raise ParseError(
                        f"message of {self._need} bytes is larger than {self.max_size}",
                        status=513,
                        partial=message,
                    )
            if len(self._buffer) < self._need:
                return out
            frame = bytes(self._buffer[: self._need])
            del self._buffer[: self._need]
            self._need = None
            try:
                out.append(
                    parse_message(frame, max_size=self.max_size, max_headers=self.max_headers)
                )
            except ParseError as exc:
                out.append(exc)


# Building messages ------------------------------------------------------------------


def new_branch() -> str:
    return MAGIC_COOKIE + secrets.token_hex(8)


def new_tag() -> str:
    return secrets.token_hex(6)


def new_call_id() -> str:
    return secrets.token_hex(12)


def make_request(
    method: str,
    uri: URI,
    *,
    via: Via,
    from_addr: Address,
    to_addr: Address,
    call_id: str,
    cseq: int,
    contact: Address | None = None,
    max_forwards: int = 70,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Request:
    request = Request(method, uri)
    h = request.headers
    h.add("Via", str(via))
    h.add("Max-Forwards", str(max_forwards))
    h.add("From", str(from_addr))
    h.add("To", str(to_addr))
    h.add("Call-ID", call_id)
    h.add("CSeq", f"{cseq} {method}")
    if contact is not None:
        h.add("Contact", str(contact))
    for name, value in headers:
        h.add(name, value)
    if body:
        h.add("Content-Type", content_type or "application/sdp")
    request.body = body
    return request


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """A response to ``request`` (RFC 3261 §8.2.6): Via, From, To, Call-ID and CSeq
    copied (Record-Route too for 101-299), a To tag added if given and To has none.
    Works on a partial request from a ParseError (values are copied unparsed)."""
    response = Response(status, reason if reason is not None else REASON_PHRASES.get(status, ""))
    h = response.headers
    src = request.headers
    for value in src.get_all("Via"):
        h.add("Via", value)
    for name in ("From", "To", "Call-ID", "CSeq"):
        copied = src.get(name)
        if copied is not None:
            if name == "To" and to_tag is not None and not _has_tag(copied):
                copied = f"{copied};tag={to_tag}"
            h.add(name, copied)
    if 100 < status < 300:
        for value in src.get_all("Record-Route"):
            h.add("Record-Route", value)
    for name, value in headers:
        h.add(name, value)
    if body:
        h.add("Content-Type", content_type or "application/sdp")
    response.body = body
    return response


def _has_tag(to_value: str) -> bool:
    try:
        return Address.parse(to_value).tag is not None
    except ParseError:
        return re.search(r";\s*tag\s*=", to_value.rpartition(">")[2], re.IGNORECASE) is not None


__all__ = [
    "COMPACT_FORMS",
    "MAGIC_COOKIE",
    "REASON_PHRASES",
    "URI",
    "Address",
    "CSeq",
    "Headers",
    "Message",
    "ParseError",
    "Request",
    "Response",
    "SipTarget",
    "StreamParser",
    "Via",
    "accepts",
    "canonical_name",
    "is_response",
    "make_request",
    "make_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse_message",
    "response_destination",
    "split_quoted",
    "stamp_received",
    "unescape",
]
