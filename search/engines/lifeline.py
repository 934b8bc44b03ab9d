"""A watchdog that ends an engine's processes when the process that started them dies, whatever killed it.

vLLM starts its engine core itself (multiprocessing's spawn, its own target function), and the core starts the
workers; no code of ours runs in them before vLLM's. Parent-death signalling (``prctl(PR_SET_PDEATHSIG)``) has to
be set inside the child, and it fires when the spawning *thread* ends, not the process. So instead a small
process is started before them and told about each one as it appears: it holds their ids (with their start
times, so that a reused id is never hit) and reads a pipe from us. Our end of the pipe closes when we exit,
however we die, SIGKILL included; it then terminates them and their descendants (SIGTERM, then SIGKILL after
``GRACE_S``). vLLM's workers already follow their engine core through a pipe of their own; this makes the core
follow us.

Run as a script (``python lifeline.py``), so that it imports nothing but psutil, which vLLM itself requires.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import IO

import psutil

GRACE_S = 5.0
"""How long the engine's processes get to shut down on SIGTERM before SIGKILL."""


RESOURCE_TRACKER = "multiprocessing.resource_tracker"


def follows_us(process: psutil.Process) -> bool:
    """Whether ``process`` ends by itself when we do: multiprocessing's resource tracker (its pipe from us closes),
    which ignores SIGTERM, so that ending it would only wait ``GRACE_S`` for the SIGKILL."""
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        return any(RESOURCE_TRACKER in part for part in process.cmdline())
    return False


def descendant_ids() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


class Lifeline:
    """The watchdog for the processes started after it while ``adopting``; ``close`` it once they have been shut
    down the normal way."""

    def __init__(self) -> None:
        others = descendant_ids()
        # Its own session, so that a signal to our process group (Ctrl-C in a terminal) leaves it to do its job.
        self._watchdog = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, text=True,
                                          stdout=subprocess.DEVNULL, start_new_session=True)
        self._others = others | {self._watchdog.pid}
        self._adopted: set[int] = set()

    @property
    def pid(self) -> int:
        return self._watchdog.pid

    def adopt(self) -> None:
        """Hand the watchdog every new descendant of ours that is not descended from a process that was already
        running when the lifeline started (another engine, a server, any subprocess: theirs, not the engine's)."""
        pipe = self._watchdog.stdin
        assert pipe is not None
        ours = psutil.Process().pid
        for process in psutil.Process().children(recursive=True):  # parents before their children
            if process.pid in self._others or process.pid in self._adopted:
                continue
            with contextlib.suppress(psutil.NoSuchProcess):
                parent = process.ppid()
                if (parent != ours and parent not in self._adopted) or follows_us(process):
                    self._others.add(process.pid)
                    continue
                self._adopted.add(process.pid)
                pipe.write(f"{process.pid} {process.create_time()!r}\n")
        pipe.flush()

    @contextlib.contextmanager
    def adopting(self, every_s: float = 0.5) -> Iterator[None]:
        """Adopt new descendants as they appear during the block (an engine starting for minutes may be killed
        half-way), and once more at its end."""
        done = threading.Event()

        def poll() -> None:
            while not done.wait(every_s):
                self.adopt()

        poller = threading.Thread(target=poll, name="lifeline-adopt", daemon=True)
        poller.start()
        try:
            yield
        finally:
            done.set()
            poller.join()
            self.adopt()

    def close(self) -> None:
        """Close the pipe as our death would; whatever of the engine is still running is ended."""
        if self._watchdog.stdin is not None and not self._watchdog.stdin.closed:
            self._watchdog.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._watchdog.wait(timeout=GRACE_S + 5)


def watched(lines: Iterable[str]) -> list[psutil.Process]:
    """The processes named by ``pid create_time`` lines, each looked up as its line arrives (a process that has
    gone, or whose id now belongs to another, is left out)."""
    found = []
    for line in lines:
        pid, _, created = line.strip().partition(" ")
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            process = psutil.Process(int(pid))
            if process.create_time() == float(created):
                found.append(process)
    return found


def end(processes: Sequence[psutil.Process]) -> None:
    """SIGTERM to each process and its descendants, SIGKILL to those still running after ``GRACE_S``."""
    everything = {process.pid: process for process in processes}
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            everything.update({child.pid: child for child in process.children(recursive=True)})
    for process in everything.values():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            process.terminate()
    deadline = time.monotonic() + GRACE_S
    alive = list(everything.values())
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [process for process in alive if running(process)]
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            process.kill()


def running(process: psutil.Process) -> bool:
    """Still running: not gone, and not a zombie (one that has exited, waiting for its parent to read its status,
    which ``psutil.wait_procs`` would wait on until the grace time is over)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def watch(pipe: IO[str]) -> None:
    """Read the processes to watch until the pipe ends, then end them."""
    end(watched(pipe))


if __name__ == "__main__":
    watch(sys.stdin)
