"""Busy ratio of one engine: the fraction of a recent window it spent generating.

Owns: `BusyWindow`, fed with start/stop times of each generation and asked for the ratio at a time.
Pure: the clock is an argument.
"""

from __future__ import annotations

from collections import deque


class BusyWindow:
    def __init__(self, window_seconds: float = 30.0) -> None:
        self.window = window_seconds
        self._done: deque[tuple[float, float]] = deque()
        self._since: float | None = None

    def start(self, now: float) -> None:
        self._since = now

    def stop(self, now: float) -> None:
        if self._since is not None:
            self._done.append((self._since, now))
            self._since = None

    def ratio(self, now: float) -> float:
        begin = now - self.window
        while self._done and self._done[0][1] <= begin:
            self._done.popleft()
        busy = sum(min(end, now) - max(start, begin) for start, end in self._done if end > begin)
        if self._since is not None:
            busy += now - max(self._since, begin)
        return max(0.0, min(1.0, busy / self.window))
