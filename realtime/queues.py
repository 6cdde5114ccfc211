"""Bounded queues between pipeline stages, with an explicit full-queue policy.

* `LATEST` (live sources): `put` never blocks; when full the OLDEST item is
  evicted and counted in `dropped`. A live camera is never back-pressured and
  a consumer never works on a frame queued behind newer ones.
* `BLOCK` (files, non-live): `put` waits for room, nothing is lost.

`close()` ends the stream: `get` drains what is left, then raises `Closed`.
"""
from __future__ import annotations

import collections
import threading

LATEST, BLOCK = "latest", "block"


class Closed(Exception):
    """The queue was closed and is empty."""


class Timeout(Exception):
    """`get` waited `timeout` seconds without an item."""


class FrameQueue:
    def __init__(self, capacity: int = 1, policy: str = LATEST, name: str = "queue") -> None:
        if capacity < 1:
            raise ValueError(f"queue {name!r}: capacity must be >= 1, got {capacity}")
        if policy not in (LATEST, BLOCK):
            raise ValueError(f"queue {name!r}: policy must be {LATEST!r} or {BLOCK!r}, got {policy!r}")
        self.capacity, self.policy, self.name = capacity, policy, name
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0
        self.put_count = 0

    def put(self, item) -> bool:
        """Add an item (policy decides what happens when full); False if the queue is closed."""
        with self._cond:
            if self.policy == BLOCK:
                while len(self._items) >= self.capacity and not self._closed:
                    self._cond.wait()
            if self._closed:
                return False
            if len(self._items) >= self.capacity:  # LATEST: evict the oldest
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self.put_count += 1
            self._cond.notify_all()
            return True

    def wait_for_space(self) -> bool:
        """Block until a `put` would not have to wait (BLOCK policy); False once closed.

        A lossless producer calls this BEFORE reading its next frame, so the frame
        is captured when it can move on, not read early and left waiting.
        """
        with self._cond:
            self._cond.wait_for(lambda: len(self._items) < self.capacity or self._closed)
            return not self._closed

    def get(self, timeout: float | None = None):
        """The oldest item; waits up to `timeout` (None: forever). Raises `Closed` or `Timeout`."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                raise Timeout(f"queue {self.name!r}: nothing after {timeout} s")
            if not self._items:
                raise Closed(self.name)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def get_nowait(self):
        """The oldest item or None when empty; raises `Closed` once closed and drained."""
        with self._cond:
            if self._items:
                item = self._items.popleft()
                self._cond.notify_all()
                return item
            if self._closed:
                raise Closed(self.name)
            return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
