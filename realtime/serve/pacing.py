"""Which frames a room sends to `endofuse serve`: every frame, or every other one while that keeps masks fresh.

A room draws each frame with the newest mask that came back; a mask counts as fresh while it is at most
2 frames old. When the server could answer within one frame apart from waiting in its own queue, a room
that sends every other frame still has a fresh mask on every frame (the answer for frame k is drawn on
k+1 and k+2), at half the load on the server. Many rooms on one busy server then leave it the time to
answer them all within a frame, where sending every frame filled its queue and made every room's masks
stale (benchmarks/rooms.py). When the round trip itself takes longer than a frame (a distant server), a
request every other frame would leave frames with a 3-frame-old mask, so every frame is sent.

    REQUEST_EVERY = "auto"  every other frame while the server's own time is under FAST_FRACTION of a
                            frame or its queue wait over BUSY_FRACTION of one, else every frame
                            (the default)
                    "1"     every frame
                    "2"     every other frame

The server's own time is the least round trip less the server's queue wait among the last WINDOW answers
(as TCP's BBR takes the least round trip for the path's delay without queueing): on an overloaded server
batches grow and each takes longer, and a mean would read that as a slow server and keep every room
sending every frame, the overload it should relieve; a distant server or a slow model shows in every
answer, so the least one still says so. And while the server reports a queue wait of over a quarter of
a frame (the median of the last WINDOW answers), the room sends every other frame whatever the round
trip: with every room sending every frame an overloaded server's batches grow and slow down until even
the least round trip is long, and only the rooms sending less lets it recover (8 rooms on 2 cores,
benchmarks/rooms.py).
"""
from __future__ import annotations

import statistics
from collections import deque

REQUEST_EVERY = ("auto", "1", "2")
FAST_FRACTION = 0.8  # of the frame interval: margin for the round trip's jitter
BUSY_FRACTION = 0.25  # of the frame interval: a server queue wait above this is a busy server
SMOOTHING = 0.2  # weight of the newest sample in the running mean of the frame interval
WINDOW = 30  # answers the server's own time is the least of (about 1-2 s of a room's answers)


def _mean(previous: float | None, sample: float) -> float:
    return sample if previous is None else previous + SMOOTHING * (sample - previous)


class RequestPacer:
    """Decides per frame whether to send it; fed with frame times and the answers' timings."""

    def __init__(self, every: str = "auto") -> None:
        if str(every) not in REQUEST_EVERY:
            raise ValueError(f"request every {every!r}: choose one of {', '.join(REQUEST_EVERY)}")
        self.every = str(every)
        self.frame_ms: float | None = None  # running mean of the time between frames
        self._service = deque(maxlen=WINDOW)  # round trip less the server's queue wait, per answer
        self._queue = deque(maxlen=WINDOW)  # the server's queue wait, per answer
        self.last_sent: int | None = None
        self._last_frame: tuple[int, float] | None = None

    def frame(self, index: int, t_ms: float) -> None:
        """Frame `index` was captured/offered at `t_ms` (any clock in ms)."""
        if self._last_frame is not None and index > self._last_frame[0]:
            per_frame = (t_ms - self._last_frame[1]) / (index - self._last_frame[0])
            self.frame_ms = _mean(self.frame_ms, per_frame)
        self._last_frame = (index, t_ms)

    def answered(self, round_trip_ms: float, server_queue_ms: float = 0.0) -> None:
        self._service.append(max(round_trip_ms - server_queue_ms, 0.0))
        self._queue.append(server_queue_ms)

    @property
    def service_ms(self) -> float | None:
        """The server's own time: the least round trip less queue wait of the last WINDOW answers."""
        return min(self._service) if self._service else None

    @property
    def queue_ms(self) -> float | None:
        """The server's queue wait: the median of the last WINDOW answers."""
        return statistics.median(self._queue) if self._queue else None

    @property
    def pacing(self) -> bool:
        """True while frames go every other one."""
        if self.every != "auto":
            return self.every == "2"
        service, queue, frame = self.service_ms, self.queue_ms, self.frame_ms
        if service is None or frame is None:
            return False
        return service < FAST_FRACTION * frame or queue > BUSY_FRACTION * frame

    def should_send(self, index: int) -> bool:
        return self.last_sent is None or index - self.last_sent >= 2 or not self.pacing

    def sent(self, index: int) -> None:
        self.last_sent = index
