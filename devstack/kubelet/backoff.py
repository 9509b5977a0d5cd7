"""Crash-loop back-off, as the real kubelet does it (10 s doubling up to 5 min)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delay before the next restart of one container.

    The first restart is immediate and arms the back-off (the real kubelet does the same);
    each later one waits ``base``, then twice as long, up to ``cap``. A container that ran
    for at least ``reset_after`` before it exited starts again from the beginning.
    """

    base: float = 10.0
    cap: float = 300.0
    reset_after: float | None = None
    _current: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.reset_after is None:
            self.reset_after = 2 * self.cap

    def next_delay(self, ran_for: float) -> float:
        """Delay before restarting a container that exited after running ``ran_for`` s."""
        assert self.reset_after is not None
        if ran_for >= self.reset_after:
            self._current = 0.0
        delay = self._current
        self._current = self.base if self._current == 0 else min(self._current * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._current = 0.0
