"""Reception statistics of one incoming RTP stream (RFC 3550 §6.4.1, appendix A).

Sans-I/O: fed header fields, sizes and arrival times (seconds, any clock).
"""

from __future__ import annotations

SEQUENCE_MODULO = 1 << 16
# RFC 3550 A.1: jumps larger than this restart the sequence space, smaller
# backwards steps are misordered packets.
MAX_DROPOUT = 3000
MAX_MISORDER = 100


class ReceptionStatistics:
    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.packets_received = 0
        self.bytes_received = 0
        self._started = False
        self._base_sequence = 0
        self._max_sequence = 0
        self._cycles = 0
        self._bad_sequence: int | None = None
        # Counts before a sequence restart, so loss is not forgotten.
        self._expected_before_restart = 0
        self._received_in_space = 0
        self._received_before_restart = 0
        # RFC 3550 A.8 interarrival jitter, in timestamp units.
        self._jitter = 0.0
        self._last_transit: float | None = None
        # RFC 3550 A.3 interval counters for fraction lost.
        self._expected_prior = 0
        self._received_prior = 0
        self.last_arrival: float | None = None

    def receive(self, sequence_number: int, timestamp: int, arrival: float, size: int) -> None:
        self.packets_received += 1
        self.bytes_received += size
        self.last_arrival = arrival
        if not self._started:
            self._start(sequence_number)
        else:
            self._update_sequence(sequence_number)
        self._received_in_space += 1
        # A.8: transit difference of consecutive packets in timestamp units.
        transit = arrival * self.clock_rate - timestamp
        if self._last_transit is not None:
            d = abs(transit - self._last_transit)
            # A timestamp wrap makes d about 2**32: skip that one sample.
            if d < (1 << 31):
                self._jitter += (d - self._jitter) / 16
        self._last_transit = transit

    def _start(self, sequence_number: int) -> None:
        self._started = True
        self._base_sequence = sequence_number
        self._max_sequence = sequence_number
        self._cycles = 0
        self._bad_sequence = None

    def _update_sequence(self, sequence_number: int) -> None:
        delta = (sequence_number - self._max_sequence) % SEQUENCE_MODULO
        if delta < MAX_DROPOUT:
            if sequence_number < self._max_sequence:
                self._cycles += SEQUENCE_MODULO
            self._max_sequence = sequence_number
            self._bad_sequence = None
        elif delta <= SEQUENCE_MODULO - MAX_MISORDER:
            # A big jump: the sender restarted. Believe it on the second packet.
            if sequence_number == self._bad_sequence:
                # The previous packet (already counted) opened the new space.
                self._expected_before_restart += self._expected_in_space()
                self._received_before_restart += self._received_in_space - 1
                self._start((sequence_number - 1) % SEQUENCE_MODULO)
                self._max_sequence = sequence_number
                self._received_in_space = 1
                self._expected_prior = 0
                self._received_prior = 0
            else:
                self._bad_sequence = (sequence_number + 1) % SEQUENCE_MODULO
        # else: duplicate or misordered, counted as received only.

    def _expected_in_space(self) -> int:
        if not self._started:
            return 0
        return self._cycles + self._max_sequence - self._base_sequence + 1

    @property
    def extended_highest_sequence(self) -> int:
        return self._cycles + self._max_sequence

    @property
    def packets_expected(self) -> int:
        return self._expected_before_restart + self._expected_in_space()

    @property
    def packets_lost(self) -> int:
        """Cumulative loss; duplicates can make it negative in RFC 3550, clamp at 0."""
        received = self._received_before_restart + self._received_in_space
        return max(0, self.packets_expected - received)

    @property
    def jitter(self) -> float:
        """Interarrival jitter in timestamp units."""
        return self._jitter

    @property
    def jitter_ms(self) -> float:
        return self._jitter * 1000.0 / self.clock_rate

    def fraction_lost(self) -> int:
        """Loss since the previous call, as the 8-bit fixed point of a report block (A.3)."""
        expected = self._expected_in_space()
        expected_interval = expected - self._expected_prior
        received_interval = self._received_in_space - self._received_prior
        self._expected_prior = expected
        self._received_prior = self._received_in_space
        lost_interval = expected_interval - received_interval
        if expected_interval <= 0 or lost_interval <= 0:
            return 0
        return min(255, (lost_interval << 8) // expected_interval)
