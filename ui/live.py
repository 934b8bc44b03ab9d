"""Which run each page session is streaming now: a newer query or Stop replaces it, and a replaced run ends at its
next event (Gradio's cancel alone has been seen to miss a run that had only just started). Only streaming runs are
held: a run leaves when it ends, when Stop is pressed and when its session closes the page, and at most
``capacity`` sessions are held at once (the oldest run beyond that ends at its next event), so that memory does not
grow with the visitors of a public Space."""

from __future__ import annotations

from collections import OrderedDict

from search.rerank.base import Run

LIVE_SESSIONS = 1024
"""The most sessions whose runs stream at once (many more than the engine serves together: the rest wait)."""


class LiveRuns:
    def __init__(self, capacity: int = LIVE_SESSIONS) -> None:
        self.capacity = capacity
        self._runs: OrderedDict[str, Run] = OrderedDict()

    def __len__(self) -> int:
        return len(self._runs)

    def start(self, session: str, run: Run) -> None:
        """``run`` is the session's run now; any earlier one ends at its next event."""
        self._runs.pop(session, None)
        self._runs[session] = run
        while len(self._runs) > self.capacity:
            self._runs.popitem(last=False)

    def current(self, session: str, run: Run) -> bool:
        """Whether ``run`` is still the session's run (not stopped, replaced, left or pushed out)."""
        return self._runs.get(session) is run

    def end(self, session: str, run: Run) -> None:
        """``run`` has ended: forget it, unless a newer run of the session has replaced it."""
        if self.current(session, run):
            del self._runs[session]

    def stop(self, session: str) -> None:
        """Stop, or the session closed the page: whatever it streams ends at its next event."""
        self._runs.pop(session, None)
