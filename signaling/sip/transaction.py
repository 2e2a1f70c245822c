"""SIP transactions (RFC 3261 §17, with the Accepted state of RFC 6026). Sans-I/O.

A transaction is fed the current time with every input and returns actions:
``Send`` (a message to its peer), ``Deliver`` (a message for the TU), ``StartTimer``
and ``StopTimer``, ``Timeout`` (Timer B, F or H: the TU must act) and
``Terminated``. ``TransactionLayer`` matches messages to transactions (§17.1.3,
§17.2.3), keeps every pending timer in one ``TimerWheel`` and passes the actions on.

Timers (defaults T1 = 0.5 s, T2 = 4 s, T4 = 5 s); on a reliable transport (TCP) the
retransmission timers A, E, G do not run and D, I, J, K are zero:

======  ===========================  ===========================================
timer   value                        meaning
======  ===========================  ===========================================
A       T1, doubling                 INVITE client: retransmit the INVITE
B       64*T1                        INVITE client: give up waiting (Calling)
D       32 s                         INVITE client: absorb final retransmissions
E       T1, doubling up to T2        non-INVITE client: retransmit the request
F       64*T1                        non-INVITE client: give up
G       T1, doubling up to T2        INVITE server: retransmit the non-2xx final
H       64*T1                        INVITE server: give up waiting for the ACK
I       T4                           INVITE server: absorb ACK retransmissions
J       64*T1                        non-INVITE server: absorb retransmissions
K       T4                           non-INVITE client: absorb final retransmissions
L       64*T1                        INVITE server after 2xx (RFC 6026 Accepted)
M       64*T1                        INVITE client after 2xx (RFC 6026 Accepted)
======  ===========================  ===========================================
"""

from __future__ import annotations

import abc
import enum
import heapq
import itertools
from dataclasses import dataclass
from typing import Protocol

from signaling.sip.message import (
    Request,
    Response,
    SipTarget,
    make_response,
)


@dataclass(frozen=True)
class TimerValues:
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    #: Timer D: at least 32 s on an unreliable transport (§17.1.1.2).
    d: float = 32.0

    @property
    def timeout(self) -> float:
        """64*T1: Timers B, F, H, J, L, M."""
        return 64 * self.t1


DEFAULT_TIMERS = TimerValues()


class State(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


class TimerOwner(Protocol):
    """Anything with named timers the wheel can fire."""

    timers: dict[str, float]

    def fire(self, name: str, now: float) -> list[Action]: ...


# Actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    message: Request | Response
    peer: SipTarget


@dataclass(frozen=True)
class Deliver:
    """A message for the TU. ``transaction`` is None for a request or response no
    transaction matched (an ACK for a 2xx, a retransmitted 2xx after Timer M)."""

    transaction: Transaction | None
    message: Request | Response


@dataclass(frozen=True)
class StartTimer:
    owner: TimerOwner
    name: str
    at: float


@dataclass(frozen=True)
class StopTimer:
    owner: TimerOwner
    name: str


@dataclass(frozen=True)
class Timeout:
    """Timer B or F (no final response: the TU treats it as 408), or Timer H (no ACK
    for our non-2xx final); or the transport failed (``timer`` is "transport")."""

    transaction: Transaction
    timer: str


@dataclass(frozen=True)
class Terminated:
    transaction: Transaction


@dataclass(frozen=True)
class Expired:
    """A TU-level timer ran out (e.g. no ACK for our 2xx, ``dialog.AnswerRetransmission``)."""

    owner: TimerOwner
    name: str


Action = Send | Deliver | StartTimer | StopTimer | Timeout | Terminated | Expired


# Keys ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransactionKey:
    branch: str
    method: str
    #: Only for server transactions (§17.2.3 matches on sent-by too).
    sent_by: str = ""


def client_key(message: Request | Response) -> TransactionKey:
    """§17.1.3: the top Via's branch and the CSeq method (ACK never has its own)."""
    branch = message.top_via.branch or ""
    return TransactionKey(branch, message.cseq.method)


def server_key(request: Request) -> TransactionKey:
    """§17.2.3: branch, sent-by and method, an ACK matching its INVITE. A branch
    without the magic cookie (RFC 2543 peers) falls back to the dialog and CSeq."""
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch or ""
    if not via.rfc3261:
        branch = "|".join(
            (
                str(request.uri),
                request.from_addr.tag or "",
                request.call_id,
                str(request.cseq.seq),
                branch,
            )
        )
    return TransactionKey(branch, method, via.sent_by)


# Transactions -------------------------------------------------------------------------


class Transaction(abc.ABC):
    """Common to the four kinds; ``request`` is the one that created it."""

    def __init__(
        self,
        key: TransactionKey,
        request: Request,
        peer: SipTarget,
        timers: TimerValues = DEFAULT_TIMERS,
    ) -> None:
        self.key = key
        self.request = request
        self.peer = peer
        self.reliable = peer.reliable
        self.t = timers
        self.state = State.TERMINATED
        self.timers: dict[str, float] = {}
        self.last_response: Response | None = None
        self._interval = timers.t1

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.method} {self.state.value} {self.key.branch}>"

    def fire(self, name: str, now: float) -> list[Action]:
        if self.timers.get(name) is None or self.state is State.TERMINATED:
            return []
        del self.timers[name]
        return self._timer(name, now)

    @abc.abstractmethod
    def _timer(self, name: str, now: float) -> list[Action]: ...

    def _start(self, name: str, at: float) -> StartTimer:
        self.timers[name] = at
        return StartTimer(self, name, at)

    def _stop(self, *names: str) -> list[Action]:
        stopped: list[Action] = []
        for name in names:
            if self.timers.pop(name, None) is not None:
                stopped.append(StopTimer(self, name))
        return stopped

    def _terminate(self) -> list[Action]:
        actions = self._stop(*list(self.timers))
        self.state = State.TERMINATED
        actions.append(Terminated(self))
        return actions

    def transport_error(self, now: float) -> list[Action]:
        """The transport could not send (§17.1.4, §17.2.4): tell the TU, end."""
        if self.state is State.TERMINATED:
            return []
        return [Timeout(self, "transport"), *self._terminate()]


class InviteClientTransaction(Transaction):
    """§17.1.1: Calling → Proceeding → Completed (non-2xx) or Accepted (2xx)."""

    def start(self, now: float) -> list[Action]:
        self.state = State.CALLING
        actions: list[Action] = [Send(self.request, self.peer)]
        self._interval = self.t.t1
        if not self.reliable:
            actions.append(self._start("A", now + self._interval))
        actions.append(self._start("B", now + self.t.timeout))
        return actions

    def receive(self, response: Response, now: float) -> list[Action]:
        status = response.status
        if self.state in (State.CALLING, State.PROCEEDING):
            if status < 200:
                self.state = State.PROCEEDING
                return [*self._stop("A", "B"), Deliver(self, response)]
            if status < 300:
                self.state = State.ACCEPTED
                return [
                    *self._stop("A", "B"),
                    Deliver(self, response),
                    self._start("M", now + self.t.timeout),
                ]
            self.state = State.COMPLETED
            self.last_response = response
            actions = [*self._stop("A", "B"), Send(make_ack(self.request, response), self.peer)]
            actions.append(Deliver(self, response))
            if self.reliable:
                return actions + self._terminate()
            actions.append(self._start("D", now + self.t.d))
            return actions
        if self.state is State.COMPLETED and status >= 300:
            return [Send(make_ack(self.request, response), self.peer)]
        if self.state is State.ACCEPTED and 200 <= status < 300:
            return [Deliver(self, response)]
        return []

    def _timer(self, name: str, now: float) -> list[Action]:
        if name == "A" and self.state is State.CALLING:
            self._interval *= 2
            return [Send(self.request, self.peer), self._start("A", now + self._interval)]
        if name == "B" and self.state is State.CALLING:
            return [Timeout(self, "B"), *self._terminate()]
        if name in ("D", "M"):
            return self._terminate()
        return []


class NonInviteClientTransaction(Transaction):
    """§17.1.2: Trying → Proceeding → Completed → Terminated."""

    def start(self, now: float) -> list[Action]:
        self.state = State.TRYING
        actions: list[Action] = [Send(self.request, self.peer)]
        self._interval = self.t.t1
        if not self.reliable:
            actions.append(self._start("E", now + self._interval))
        actions.append(self._start("F", now + self.t.timeout))
        return actions

    def receive(self, response: Response, now: float) -> list[Action]:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return []  # Completed: absorb retransmitted finals
        if response.status < 200:
            self.state = State.PROCEEDING
            return [Deliver(self, response)]
        self.state = State.COMPLETED
        self.last_response = response
        actions = [*self._stop("E", "F"), Deliver(self, response)]
        if self.reliable:
            return actions + self._terminate()
        actions.append(self._start("K", now + self.t.t4))
        return actions

    def _timer(self, name: str, now: float) -> list[Action]:
        if name == "E" and self.state in (State.TRYING, State.PROCEEDING):
            if self.state is State.TRYING:
                self._interval = min(2 * self._interval, self.t.t2)
            else:
                self._interval = self.t.t2
            return [Send(self.request, self.peer), self._start("E", now + self._interval)]
        if name == "F" and self.state in (State.TRYING, State.PROCEEDING):
            return [Timeout(self, "F"), *self._terminate()]
        if name == "K":
            return self._terminate()
        return []


class InviteServerTransaction(Transaction):
    """§17.2.1: Proceeding → Completed → Confirmed (non-2xx), or Accepted (2xx).

    ``start`` sends 100 Trying at once (the §17.2.1 200 ms rule, with zero wait)."""

    def start(self, now: float) -> list[Action]:
        self.state = State.PROCEEDING
        self.last_response = make_response(self.request, 100)
        return [Send(self.last_response, self.peer)]

    def receive(self, request: Request, now: float) -> list[Action]:
        if request.method == "ACK":
            if self.state is State.COMPLETED:
                self.state = State.CONFIRMED
                actions = self._stop("G", "H")
                if self.reliable:
                    return actions + self._terminate()
                actions.append(self._start("I", now + self.t.t4))
                return actions
            if self.state is State.ACCEPTED:
                return [Deliver(self, request)]  # RFC 6026: a 2xx ACK goes to the TU
            return []
        # A retransmitted INVITE: resend the last response (not in Accepted, RFC 6026).
        if self.state in (State.PROCEEDING, State.COMPLETED) and self.last_response:
            return [Send(self.last_response, self.peer)]
        return []

    def respond(self, response: Response, now: float) -> list[Action]:
        """The TU's response. Raises ValueError when the state does not allow it."""
        status = response.status
        if self.state is State.ACCEPTED and 200 <= status < 300:
            return [Send(response, self.peer)]  # the TU retransmits its 2xx
        if self.state is not State.PROCEEDING:
            raise ValueError(f"cannot send {status} in state {self.state.value}")
        self.last_response = response
        actions: list[Action] = [Send(response, self.peer)]
        if status < 200:
            return actions
        if status < 300:
            self.state = State.ACCEPTED
            actions.append(self._start("L", now + self.t.timeout))
            return actions
        self.state = State.COMPLETED
        self._interval = self.t.t1
        if not self.reliable:
            actions.append(self._start("G", now + self._interval))
        actions.append(self._start("H", now + self.t.timeout))
        return actions

    def _timer(self, name: str, now: float) -> list[Action]:
        if name == "G" and self.state is State.COMPLETED and self.last_response:
            self._interval = min(2 * self._interval, self.t.t2)
            return [Send(self.last_response, self.peer), self._start("G", now + self._interval)]
        if name == "H" and self.state is State.COMPLETED:
            return [Timeout(self, "H"), *self._terminate()]
        if name in ("I", "L"):
            return self._terminate()
        return []

    @property
    def final_sent(self) -> bool:
        return self.state is not State.PROCEEDING


class NonInviteServerTransaction(Transaction):
    """§17.2.2: Trying → Proceeding → Completed → Terminated."""

    def start(self, now: float) -> list[Action]:
        self.state = State.TRYING
        return []

    def receive(self, request: Request, now: float) -> list[Action]:
        if self.state in (State.PROCEEDING, State.COMPLETED) and self.last_response:
            return [Send(self.last_response, self.peer)]
        return []  # Trying: the TU has not answered yet, absorb

    def respond(self, response: Response, now: float) -> list[Action]:
        if self.state not in (State.TRYING, State.PROCEEDING):
            raise ValueError(f"cannot send {response.status} in state {self.state.value}")
        self.last_response = response
        actions: list[Action] = [Send(response, self.peer)]
        if response.status < 200:
            self.state = State.PROCEEDING
            return actions
        self.state = State.COMPLETED
        if self.reliable:
            return actions + self._terminate()
        actions.append(self._start("J", now + self.t.timeout))
        return actions

    def _timer(self, name: str, now: float) -> list[Action]:
        if name == "J":
            return self._terminate()
        return []


ClientTransaction = InviteClientTransaction | NonInviteClientTransaction
ServerTransaction = InviteServerTransaction | NonInviteServerTransaction


def make_ack(invite: Request, response: Response) -> Request:
    """The ACK for a non-2xx final response (§17.1.1.3): the INVITE's Request-URI,
    Call-ID, From, CSeq number, top Via and Route; To from the response."""
    ack = Request("ACK", invite.uri)
    h = ack.headers
    h.add("Via", invite.headers.get("Via") or "")
    h.add("Max-Forwards", "70")
    h.add("From", invite.headers.get("From") or "")
    h.add("To", response.headers.get("To") or "")
    h.add("Call-ID", invite.call_id)
    h.add("CSeq", f"{invite.cseq.seq} ACK")
    for route in invite.headers.get_all("Route"):
        h.add("Route", route)
    return ack


def make_cancel(invite: Request, headers: list[tuple[str, str]] | None = None) -> Request:
    """The CANCEL for our INVITE (§9.1): same Request-URI, Call-ID, From, To, CSeq
    number and top Via (so the same branch), the Route set; method CANCEL."""
    cancel = Request("CANCEL", invite.uri)
    h = cancel.headers
    h.add("Via", invite.headers.get("Via") or "")
    h.add("Max-Forwards", "70")
    h.add("From", invite.headers.get("From") or "")
    h.add("To", invite.headers.get("To") or "")
    h.add("Call-ID", invite.call_id)
    h.add("CSeq", f"{invite.cseq.seq} CANCEL")
    for route in invite.headers.get_all("Route"):
        h.add("Route", route)
    for name, value in headers or []:
        h.add(name, value)
    return cancel


# The wheel and the layer ---------------------------------------------------------------


class TimerWheel:
    """Every pending timer of every owner, earliest first (a heap with lazy deletion:
    an entry counts only while its owner still has that timer set to that time)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerOwner, str]] = []
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def track(self, actions: list[Action]) -> list[Action]:
        for action in actions:
            if isinstance(action, StartTimer):
                heapq.heappush(
                    self._heap, (action.at, next(self._counter), action.owner, action.name)
                )
        return actions

    def _prune(self) -> None:
        heap = self._heap
        while heap:
            at, _, owner, name = heap[0]
            if owner.timers.get(name) == at:
                return
            heapq.heappop(heap)

    def next_deadline(self) -> float | None:
        self._prune()
        return self._heap[0][0] if self._heap else None

    def fire(self, now: float) -> list[Action]:
        """Fire every timer due at ``now``, in order; timers they start are tracked."""
        actions: list[Action] = []
        while True:
            self._prune()
            if not self._heap or self._heap[0][0] > now:
                return actions
            _, _, owner, name = heapq.heappop(self._heap)
            actions.extend(self.track(owner.fire(name, now)))


class TransactionLayer:
    """Creates and matches transactions; the TU sees only Deliver, Timeout, Terminated
    and the Sends it should hand to the transport (timer actions pass through too)."""

    def __init__(self, timers: TimerValues = DEFAULT_TIMERS) -> None:
        self.t = timers
        self.wheel = TimerWheel()
        self.transactions: dict[TransactionKey, Transaction] = {}

    def _actions(self, actions: list[Action]) -> list[Action]:
        for action in self.wheel.track(actions):
            if isinstance(action, Terminated):
                key = action.transaction.key
                if self.transactions.get(key) is action.transaction:
                    del self.transactions[key]
        return actions

    def send_request(
        self, request: Request, peer: SipTarget, now: float
    ) -> tuple[ClientTransaction, list[Action]]:
        """A client transaction for ``request`` (not ACK: a 2xx ACK is sent directly)."""
        if request.method == "ACK":
            raise ValueError("an ACK has no client transaction")
        key = client_key(request)
        txn: ClientTransaction
        if request.method == "INVITE":
            txn = InviteClientTransaction(key, request, peer, self.t)
        else:
            txn = NonInviteClientTransaction(key, request, peer, self.t)
        self.transactions[key] = txn
        return txn, self._actions(txn.start(now))

    def receive_request(self, request: Request, peer: SipTarget, now: float) -> list[Action]:
        """A request from the transport: a retransmission or ACK for an existing
        server transaction, or a new one delivered to the TU (after 100 Trying for
        an INVITE). An unmatched ACK is delivered without a transaction."""
        key = server_key(request)
        txn = self.transactions.get(key)
        if isinstance(txn, InviteServerTransaction | NonInviteServerTransaction):
            return self._actions(txn.receive(request, now))
        if request.method == "ACK":
            return [Deliver(None, request)]
        server: ServerTransaction
        if request.method == "INVITE":
            server = InviteServerTransaction(key, request, peer, self.t)
        else:
            server = NonInviteServerTransaction(key, request, peer, self.t)
        self.transactions[key] = server
        return self._actions([*server.start(now), Deliver(server, request)])

    def respond(self, txn: ServerTransaction, response: Response, now: float) -> list[Action]:
        return self._actions(txn.respond(response, now))

    def receive_response(self, response: Response, now: float) -> list[Action]:
        txn = self.transactions.get(client_key(response))
        if isinstance(txn, InviteClientTransaction | NonInviteClientTransaction):
            return self._actions(txn.receive(response, now))
        return [Deliver(None, response)]

    def transport_error(self, txn: Transaction, now: float) -> list[Action]:
        return self._actions(txn.transport_error(now))

    def abandon(self, txn: Transaction) -> list[Action]:
        """The TU gives up on ``txn`` (§9.1: a cancelled INVITE that got no final
        response within 64*T1): it ends at once, without telling the TU more."""
        if txn.state is State.TERMINATED:
            return []
        return self._actions(txn._terminate())

    def find_invite(self, cancel: Request) -> InviteServerTransaction | None:
        """The INVITE server transaction a CANCEL is for (§9.2)."""
        key = server_key(cancel)
        txn = self.transactions.get(TransactionKey(key.branch, "INVITE", key.sent_by))
        return txn if isinstance(txn, InviteServerTransaction) else None

    def next_deadline(self) -> float | None:
        return self.wheel.next_deadline()

    def on_timer(self, now: float) -> list[Action]:
        return self._actions(self.wheel.fire(now))


__all__ = [
    "DEFAULT_TIMERS",
    "Action",
    "ClientTransaction",
    "Deliver",
    "Expired",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "Send",
    "ServerTransaction",
    "StartTimer",
    "State",
    "StopTimer",
    "Terminated",
    "Timeout",
    "TimerOwner",
    "TimerValues",
    "TimerWheel",
    "Transaction",
    "TransactionKey",
    "TransactionLayer",
    "client_key",
    "make_ack",
    "make_cancel",
    "server_key",
]
