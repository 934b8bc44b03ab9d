"""Progress reporting for long work (indexing, encoding, model loading), shown by whichever front end runs it."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, task: str, done: int, total: int) -> None:
        """``done`` of ``total`` units of ``task`` are finished; called with ``done == 0`` when it starts."""


def no_progress(task: str, done: int, total: int) -> None:
    """For callers that show nothing."""


def console_progress() -> Progress:
    """A tqdm bar per task on standard error, for the command line."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def report(task: str, done: int, total: int) -> None:
        bar = bars.get(task)
        if bar is None:
            bar = bars[task] = tqdm(total=total, desc=task, unit="", leave=False, dynamic_ncols=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            del bars[task]

    return report


