"""Reading a stream of events in one task of its own, so that waiting for the next one can end at once: the page's
Stop, a newer query or the page's closing during a prefill seconds long, or while the run waits for a slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

T = TypeVar("T")


async def read_until(items: AsyncIterator[T], ended: asyncio.Event, slots: asyncio.Semaphore) -> AsyncIterator[T]:
    """``items``, read by one task of their own while it holds one of ``slots``, until they run out or ``ended`` is
    set. Once ended, the reader is cancelled at once, and once closed, cancelled and awaited: its wait for a slot or
    for the next item (on a CPU, a prefill seconds away) ends, and with it the items and their engine requests.
    One task reads them all, so that an engine that knows its readers (the transformers engine waits for them as
    it closes) sees one."""
    arrived: asyncio.Queue[T | Exception | object] = asyncio.Queue()

    async def read() -> None:
        try:
            async with slots:
                async for item in items:
                    arrived.put_nowait(item)
        except Exception as error:  # the items' failure is the reading's
            arrived.put_nowait(error)
        finally:
            arrived.put_nowait(_DONE)

    def end(_: object) -> None:  # at once, wherever the reading's consumer is, even held in a ``yield``
        reader.cancel()
        arrived.put_nowait(_DONE)

    reader = asyncio.ensure_future(read())
    waking = asyncio.ensure_future(ended.wait())
    waking.add_done_callback(end)
    try:
        while (item := await arrived.get()) is not _DONE:
            if isinstance(item, Exception):
                raise item
            yield item  # type: ignore[misc]
    finally:
        waking.cancel()
        await cancelled(reader)


_DONE = object()
"""Put on ``read_until``'s queue when the items have run out, failed or been ended."""


async def cancelled(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, even while the waiting task is cancelled again meanwhile (a
    cancel scope cancels once per loop iteration until its task ends); that cancellation is raised once ``task``
    has ended, so a reader is never left running with its items."""
    task.cancel()
    interrupted: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError as error:
            interrupted = error
    if interrupted is not None:
        raise interrupted
