"""``rerank-run --ray``: a batch on a Ray cluster. One worker (a Ray actor) per GPU, or per node on a cluster
without GPUs, opens the model and the reranker through the code one machine uses (``open_model``,
``build_reranker``) and streams each query's events back; the driver keeps the batch exactly as on one machine (the
store, the progress bar, the outputs), so a killed driver resumes with or without Ray.

Actors rather than Ray Data: a batch is per-query event streams folded into the driver's store as they land (what
resume and the live Evaluation tab read), the model loaded once per worker and kept busy across queries; Ray Data's
``map_batches`` hands back whole batches of rows, with no events until a batch of queries is done.

A worker lost with its node: each query it held goes back in the queue with only what it still lacked (what had
arrived is kept, never counted twice), another worker takes it, and the store records the retry for the report."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from search.batch.inputs import BatchInputs
from search.batch.runner import BatchProgress, Report, Work, plan_batch, query_lanes, rerank_query
from search.batch.store import BatchStore, Retry
from search.cluster import ClusterError, alive_nodes
from search.rerank.events import Event
from search.rerank.registry import reranker_class
from search.retrieval.ranking import Candidate
from search.settings import Settings

try:
    import ray
    from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("--ray needs Ray: pip install 'explainable-search[ray]'") from error

LOST = (RayActorError, ActorUnavailableError)
"""What awaiting a worker raises when it (or its node) is gone."""
MAX_TRIES = 3
"""How many times one query may lose its worker before the batch stops (it resumes where it stopped)."""
START_TIMEOUT_S = 1800.0
"""How long a worker may take to load its model (a 7B model from the hub, the first time)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerSpec:
    """What a started worker serves: the batch's fingerprint needs the model key and budget."""

    node: str
    pid: int
    model_key: str
    budget: int
    description: str
    concurrency: int


class RerankWorker:
    """One engine and reranker on one node (made a Ray actor by ``start_workers``)."""

    def __init__(self, settings: Settings) -> None:
        import torch

        from search.pipeline import build_reranker, open_model

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus:  # the cores Ray gave this worker, no more: workers sharing a node do not oversubscribe it
            torch.set_num_threads(max(1, int(cpus)))
        self.reranker = build_reranker(settings.rerank, open_model(settings.serving, settings.rerank.reranker))
        self.concurrency = settings.rerank.concurrency or self.reranker.engine.capacity
        self.slots: asyncio.Semaphore | None = None

    def spec(self) -> WorkerSpec:
        return WorkerSpec(node=ray.util.get_node_ip_address(), pid=os.getpid(), model_key=self.reranker.model_key,
                          budget=self.reranker.budget, description=self.reranker.describe(),
                          concurrency=self.concurrency)

    def requests_per_query(self, candidates: int) -> int:
        return self.reranker.requests_per_query(candidates)

    async def rerank(self, text: str, instruction: str, candidates: tuple[Candidate, ...]) -> AsyncIterator[Event]:
        """Every event of one query, as the model writes them; up to ``concurrency`` requests across queries."""
        self.slots = self.slots or asyncio.Semaphore(self.concurrency)
        async for event in self.reranker.stream(text, candidates, instruction=instruction, slots=self.slots):
            yield event


@dataclass(kw_only=True, slots=True)
class Worker:
    """A started worker, as the driver sees it."""

    actor: Any
    spec: WorkerSpec

    async def back(self) -> bool:
        """Whether the worker is serving again after it was lost (Ray restarts it, on its node or another one with
        room); False when it is gone for good or not back within ``START_TIMEOUT_S``."""
        try:
            await asyncio.wait_for(self.actor.spec.options(max_task_retries=-1).remote(), START_TIMEOUT_S)
        except (TimeoutError, asyncio.TimeoutError, *LOST):
            return False
        return True

    async def events(self, work: Work) -> AsyncIterator[Event]:
        """The query's events as the worker writes them (Ray's streaming generator, awaited one by one)."""
        query = work.item.query
        stream = self.actor.rerank.options(num_returns="streaming").remote(query.text, query.instruction, work.todo)
        async for reference in stream:
            yield await reference


def _placements(workers: int) -> list[dict[str, Any]]:
    """Each worker's Ray options: a GPU each where the cluster has GPUs, else one per node with the node's cores
    (soft affinity, so a restarted worker may land elsewhere); ClusterError when the cluster has no room."""
    free = ray.available_resources()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        count = workers or gpus
        if count > int(free.get("GPU", 0)):
            raise ClusterError(f"--ray-workers {count}: the cluster has {int(free.get('GPU', 0))} of {gpus} GPUs "
                               "free, one per worker")
        return [{"num_gpus": 1, "num_cpus": 1}] * count
    nodes = alive_nodes()
    count = workers or len(nodes)
    if not nodes or count > int(free.get("CPU", 0)):
        raise ClusterError(f"--ray-workers {count}: the cluster has {int(free.get('CPU', 0))} CPUs free and no GPU; "
                           "each worker needs a CPU")
    per_node = -(-count // len(nodes))
    cpus = max(1, min(int(node["Resources"]["CPU"]) for node in nodes) // per_node)  # a node's cores, shared out
    return [{"num_cpus": cpus, "scheduling_strategy": NodeAffinitySchedulingStrategy(
        node_id=nodes[index % len(nodes)]["NodeID"], soft=True)} for index in range(count)]


def start_workers(settings: Settings) -> list[Worker]:
    """The workers, each with the model loaded (their specs agree: one model, one budget)."""
    remote = ray.remote(max_restarts=-1, max_task_retries=0)(RerankWorker)
    actors = [remote.options(**placement).remote(settings) for placement in _placements(settings.cluster.ray_workers)]
    try:
        specs = ray.get([actor.spec.remote() for actor in actors], timeout=START_TIMEOUT_S)
    except GetTimeoutError:
        raise ClusterError(f"the workers did not start within {START_TIMEOUT_S:.0f} s: the cluster may lack the "
                           "resources (see `ray status`)") from None
    return [Worker(actor=actor, spec=spec) for actor, spec in zip(actors, specs, strict=True)]


def stop_workers(workers: list[Worker]) -> None:
    for worker in workers:
        ray.kill(worker.actor, no_restart=True)
    ray.shutdown()


async def run_batch_on_ray(inputs: BatchInputs, store: BatchStore, settings: Settings, workers: list[Worker], *,
                           report: Report, lost: Callable[[Retry], None] = lambda retry: None) -> BatchProgress:
    """Rerank what is not yet done on ``workers``, whole queries each, every kept event recorded by the driver as
    it lands. A query whose worker is lost goes back in the queue with what it still lacks (``lost`` hears of
    each), at most ``MAX_TRIES`` times; a worker that is restarting takes work again once it is back."""
    cls = reranker_class(settings.rerank.reranker)
    work, progress = plan_batch(inputs, store, lambda item: cls.new_run(
        item.query.text, item.candidates, instruction=item.query.instruction, settings=settings.rerank))
    report(progress)
    if not work:
        return progress
    queue: asyncio.Queue[Work] = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)
    tries: dict[str, int] = {}
    finished = asyncio.Event()
    left = len(work)
    sizes = {len(item.todo) for item in work}
    widest = max([await workers[0].actor.requests_per_query.remote(size) for size in sizes])

    async def lane(worker: Worker) -> None:
        nonlocal left
        while True:
            item = await queue.get()
            query_id = item.item.query.query_id
            try:
                await rerank_query(item, store, worker.events(item), progress, report)
            except LOST as error:
                again = item.again()
                tries[query_id] = tries.get(query_id, 0) + 1
                retry = Retry(query_id=query_id, lost=worker.spec.node, reason=type(error).__name__,
                              documents=len(again.todo))
                store.record_retry(retry)
                lost(retry)
                if tries[query_id] >= MAX_TRIES:
                    raise ClusterError(f"query {query_id} lost its worker {MAX_TRIES} times; what arrived is kept: "
                                       "run the same command again to resume") from None
                queue.put_nowait(again)
                if not await worker.back():
                    return
                continue
            left -= 1
            progress.queries_done += 1
            report(progress)
            if left == 0:
                finished.set()

    lanes = [asyncio.create_task(lane(worker)) for worker in workers
             for _ in range(min(query_lanes(worker.spec.concurrency, widest), len(work)))]
    waiting = asyncio.create_task(finished.wait())
    try:
        alive = lanes
        while not waiting.done():
            done, _ = await asyncio.wait([waiting, *alive], return_when=asyncio.FIRST_COMPLETED)
            for task in done - {waiting}:
                task.result()  # our own error, or a query lost too often
            alive = [task for task in alive if not task.done()]
            if not alive and not waiting.done():
                raise ClusterError(f"every worker was lost with {left} queries unfinished; what arrived is kept: "
                                   "run the same command again to resume")
    finally:
        for task in [waiting, *lanes]:
            task.cancel()
        await asyncio.gather(waiting, *lanes, return_exceptions=True)
    return progress
