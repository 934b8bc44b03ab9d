"""Which run each page session is streaming now: a newer query or Stop replaces it, and a replaced run ends at once,
even while it waits for a slot or for its next event, which on a CPU may be a prefill seconds away (Gradio's
cancel alone has been seen to miss a run that had only just started, and, cancelling one mid-way through its first
update, to blank the results). A Stop pressed after Enter but before the run began holds too: the run begins
stopped. Only streaming runs are held, with the sessions whose Stop waits for a run: a run leaves when it ends,
when Stop is pressed and when its session closes the page, and at most ``capacity`` sessions are held at once (the
oldest beyond that are dropped), so that memory does not grow with the visitors of a public Space."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from search.rerank.base import Run

LIVE_SESSIONS = 1024
"""The most sessions whose runs stream at once (many more than the engine serves together: the rest wait)."""


class LiveRuns:
    """Called from the event loop and from handlers' threads alike: each change is made under one lock, and a run
    ended is woken only once the change is made, so that its loop sees why it ended (``halted``)."""

    def __init__(self, capacity: int = LIVE_SESSIONS) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._runs: OrderedDict[str, tuple[Run, Callable[[], None]]] = OrderedDict()
        """Each session's streaming run, with what wakes its loop when the run is ended for it."""
        self._halted: OrderedDict[str, int] = OrderedDict()
        """Sessions whose last word was Stop (no run has been asked for since), with the ``id`` of the run it ended
        (or of None when there was none): only its identity is kept, not the run and its reasoning. A run with that
        id is that run: the loop asking holds it, and a newer run of the session begins only after Enter, which
        forgets the Stop."""

    def __len__(self) -> int:
        return len(self._runs)

    def begin(self, session: str) -> None:
        """Enter, a link or an example asks for a run (it begins once the server gets to it): a Stop from now on
        stops it, whether or not it has begun."""
        with self._lock:
            self._halted.pop(session, None)

    def start(self, session: str, run: Run, wake: Callable[[], None] = lambda: None) -> bool:
        """``run`` is the session's run now, and any earlier one ends; False (and nothing held) when Stop came after
        the run was asked for: it begins stopped. ``wake`` is called (from any thread) once the run is ended for it:
        stopped, replaced, left or pushed out."""
        with self._lock:
            if session in self._halted:
                return False
            ended = [self._runs.pop(session, None)]
            self._runs[session] = (run, wake)
            while len(self._runs) > self.capacity:
                ended.append(self._runs.popitem(last=False)[1])
        _wake(*ended)
        return True

    def current(self, session: str, run: Run) -> bool:
        """Whether ``run`` is still the session's run (not stopped, replaced, left or pushed out)."""
        held = self._runs.get(session)
        return held is not None and held[0] is run

    def end(self, session: str, run: Run) -> None:
        """``run`` has ended: forget it, unless a newer run of the session has replaced it."""
        with self._lock:
            if self.current(session, run):
                del self._runs[session]

    def stop(self, session: str) -> None:
        """Stop: whatever the session streams ends at once, and shows itself stopped; a run asked for and not yet
        begun begins stopped."""
        with self._lock:
            ended = self._runs.pop(session, None)
            self._halted.pop(session, None)
            self._halted[session] = id(ended[0] if ended else None)
            while len(self._halted) > self.capacity:
                self._halted.popitem(last=False)
        _wake(ended)

    def halted(self, session: str, run: Run | None) -> bool:
        """Whether Stop ended ``run`` (not a newer query, another corpus or the page's closing)."""
        return self._halted.get(session) == id(run)

    def forget(self, session: str) -> None:
        """The session closed the page or chose another corpus: what it streams ends at once, unseen."""
        with self._lock:
            ended = self._runs.pop(session, None)
            self._halted.pop(session, None)
        _wake(ended)


def _wake(*ended: tuple[Run, Callable[[], None]] | None) -> None:
    """Wake the loops of the runs ``ended`` (their entries as held; None where a session held none)."""
    for held in ended:
        if held is not None:
            held[1]()
