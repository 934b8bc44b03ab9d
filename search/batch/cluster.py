"""``rerank-run --ray``: a batch on a Ray cluster. One worker (a Ray actor) per GPU, or per node on a cluster
without GPUs, opens the model and the reranker through the code one machine uses (``open_model``,
``build_reranker``) and streams each query's events back; the driver keeps the batch exactly as on one machine (the
store, the progress bar, the outputs), so a killed driver resumes with or without Ray.

Actors rather than Ray Data: a batch is per-query event streams folded into the driver's store as they land (what
resume and the live Evaluation tab read), the model loaded once per worker and kept busy across queries; Ray Data's
``map_batches`` hands back whole batches of rows, with no events until a batch of queries is done.

Workers are placed together in one placement group (each with its own node's cores), or refused within
``PLACE_TIMEOUT_S`` when the cluster has no room; once started, their specs (model, revision, dtype, budget,
reranker) must agree, since one batch holds one model's judgments.

A worker lost with its node: each query it held goes back in the queue with only what it still lacked (what had
arrived is kept, never counted twice), another worker takes it, and the store records the retry for the report. A
worker writes no judgment cache of its own: each entry it would write (a ReasonRank window's response) is relayed to
the driver, which keeps it in the batch's cache and seeds the retry's worker with the query's entries, so a
ReasonRank query replays its finished windows instead of reasoning them again."""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.batch.inputs import BatchInputs, BatchQuery
from search.batch.runner import BatchProgress, Report, Work, plan_batch, query_lanes, rerank_query
from search.batch.store import BatchStore, Retry
from search.cluster import ClusterError, alive_nodes
from search.engines.base import cpu_dtype
from search.rerank.base import Run
from search.rerank.cache import JudgmentCache
from search.rerank.events import Event
from search.rerank.registry import reranker_class
from search.retrieval.ranking import Candidate
from search.settings import Settings

try:
    import ray
    from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError
    from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("--ray needs Ray: pip install 'explainable-search[ray]'") from error

LOST = (RayActorError, ActorUnavailableError)
"""What awaiting a worker raises when it (or its node) is gone."""
MAX_TRIES = 3
"""How many times one query may lose its worker before the batch stops (it resumes where it stopped)."""
START_TIMEOUT_S = 1800.0
"""How long a worker may take to load its model (a 7B model from the hub, the first time)."""
PLACE_TIMEOUT_S = 10.0
"""How long the cluster may take to reserve the workers' resources before it is said to have no room (what is
free is placed at once; more waits for other work to end, or for nodes that may never come)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerSpec:
    """What a started worker serves: the batch's fingerprint needs the model key and budget, and every worker's
    ``AGREED`` fields must be the same (each node chooses for itself with ``--model auto``)."""

    node: str
    pid: int
    reranker: str
    model_key: str
    revision: str
    """The Hub snapshot (commit) of the weights this node loaded; empty for a local folder or a server's model."""
    dtype: str
    budget: int
    description: str
    concurrency: int

    @property
    def where(self) -> str:
        return f"pid {self.pid} on {self.node}"


AGREED = ("reranker", "model_key", "revision", "dtype", "budget")
"""What every worker of one batch must share: what determines its judgments."""


def disagreement(specs: list[WorkerSpec]) -> str | None:
    """Which ``AGREED`` fields the workers differ in, each with which worker has what (values in order); None
    when they agree."""
    differences = []
    for name in AGREED:
        holders: dict[Any, list[str]] = {}
        for spec in specs:
            holders.setdefault(getattr(spec, name), []).append(spec.where)
        if len(holders) > 1:
            values = sorted(holders)  # one field, one type
            differences.append(f"{name.removesuffix('_key')} " + " vs ".join(
                f"{value or '(none)'} ({', '.join(holders[value])})" for value in values))
    return "; ".join(differences) or None


def revision(location: str) -> str:
    """The Hub snapshot a model location resolves to on this node (its commit), or empty for a local folder."""
    if not location or Path(location).is_dir():
        return ""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(location, "config.json")
    return Path(found).parent.name if isinstance(found, str) else ""


@dataclass(frozen=True, kw_only=True, slots=True)
class CacheEntry:
    """One judgment-cache entry a worker wrote (``JudgmentCache.put``'s arguments), relayed to the driver."""

    key: str
    record: dict[str, Any]
    model: str
    recipe: str
    budget: int
    prompt: str

    def put_into(self, cache: JudgmentCache) -> None:
        JudgmentCache.put(cache, self.key, self.record, model=self.model, recipe=self.recipe, budget=self.budget,
                          prompt=self.prompt)


class RelayCache(JudgmentCache):
    """A worker's judgment cache for one query: in memory, seeded with the entries the driver has of it (what an
    earlier try of the query wrote), each new entry also kept in ``fresh`` for the worker to relay."""

    def __init__(self, known: tuple[CacheEntry, ...]) -> None:
        super().__init__(Path(":memory:"))
        self.fresh: list[CacheEntry] = []
        for entry in known:
            entry.put_into(self)

    def put(self, key: str, record: dict[str, Any], *, model: str, recipe: str, budget: int, prompt: str) -> None:
        super().put(key, record, model=model, recipe=recipe, budget=budget, prompt=prompt)
        self.fresh.append(CacheEntry(key=key, record=record, model=model, recipe=recipe, budget=budget,
                                     prompt=prompt))

    def take(self) -> list[CacheEntry]:
        """The entries written since the last call."""
        fresh, self.fresh = self.fresh, []
        return fresh


class RerankWorker:
    """One engine and reranker on one node (made a Ray actor by ``start_workers``)."""

    def __init__(self, settings: Settings) -> None:
        import torch

        from search.pipeline import build_reranker, open_model

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus:  # the cores Ray gave this worker, no more: workers sharing a node do not oversubscribe it
            torch.set_num_threads(max(1, int(cpus)))
        loaded = open_model(settings.serving, settings.rerank.reranker)
        self.reranker = build_reranker(settings.rerank, loaded)
        self.revision = revision(loaded.model.location)
        self.dtype = cpu_dtype(settings.serving.dtype, "cpu" if loaded.engine.on_cpu else "cuda")
        self.concurrency = settings.rerank.concurrency or self.reranker.engine.capacity
        self.slots: asyncio.Semaphore | None = None

    def spec(self) -> WorkerSpec:
        return WorkerSpec(node=ray.util.get_node_ip_address(), pid=os.getpid(), reranker=self.reranker.name,
                          model_key=self.reranker.model_key, revision=self.revision, dtype=self.dtype,
                          budget=self.reranker.budget, description=self.reranker.describe(),
                          concurrency=self.concurrency)

    def requests_per_query(self, candidates: int) -> int:
        return self.reranker.requests_per_query(candidates)

    async def rerank(self, text: str, instruction: str, candidates: tuple[Candidate, ...],
                     known: tuple[CacheEntry, ...]) -> AsyncIterator[Event | CacheEntry]:
        """Every event of one query as the model writes them, each cache entry just before the event it made;
        ``known``: the entries an earlier try of the query wrote. Up to ``concurrency`` requests across queries."""
        self.slots = self.slots or asyncio.Semaphore(self.concurrency)
        cache = RelayCache(known)
        reranker = copy.copy(self.reranker)  # the same engine and settings, this query's cache
        reranker.cache = cache
        async for event in reranker.stream(text, candidates, instruction=instruction, slots=self.slots):
            for entry in cache.take():
                yield entry
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
        except (TimeoutError, *LOST):
            return False
        return True

    async def events(self, work: Work, entries: list[CacheEntry], cache: JudgmentCache) -> AsyncIterator[Event]:
        """The query's events as the worker writes them (Ray's streaming generator, awaited one by one). The
        worker is given the query's ``entries`` so far; each new one is added to them and kept in ``cache``."""
        query = work.item.query
        stream = self.actor.rerank.options(num_returns="streaming").remote(query.text, query.instruction, work.todo,
                                                                           tuple(entries))
        async for reference in stream:
            item = await reference
            if isinstance(item, CacheEntry):
                entries.append(item)
                item.put_into(cache)
            else:
                yield item


def _bundles(workers: int) -> list[dict[str, float]]:
    """What each worker asks for: a GPU (and a core) each where the cluster has GPUs; else the workers go round the
    nodes, each with its own node's cores shared among the workers on it."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus:
        return [{"GPU": 1, "CPU": 1}] * (workers or gpus)
    nodes = alive_nodes()
    if not nodes:
        raise ClusterError("--ray: the cluster has no node with a CPU")
    count = workers or len(nodes)
    homes = [nodes[index % len(nodes)] for index in range(count)]
    return [{"CPU": max(1, int(node["Resources"]["CPU"]) // homes.count(node))} for node in homes]


def _reserve(bundles: list[dict[str, float]]) -> PlacementGroup:
    """The workers' resources, reserved together (spread over the nodes), or ClusterError within
    ``PLACE_TIMEOUT_S`` naming what was asked for (each worker's share sorted: Ray lists nodes in no fixed order)
    and what is free."""
    group = placement_group(bundles, strategy="SPREAD")
    if group.wait(timeout_seconds=PLACE_TIMEOUT_S):
        return group
    remove_placement_group(group)
    asked = ", ".join(f"{amount:g} {name}" for name, amount in sorted(
        {name: sum(bundle.get(name, 0) for bundle in bundles) for name in ("GPU", "CPU")}.items()) if amount)
    free = ray.available_resources()
    raise ClusterError(f"--ray-workers {len(bundles)}: the cluster has no room for the workers: they need {asked} "
                       f"({', '.join(sorted(_describe(bundle) for bundle in bundles))}) and it has "
                       f"{free.get('CPU', 0):g} CPUs and {free.get('GPU', 0):g} GPUs free (see `ray status`)")


def _describe(bundle: dict[str, float]) -> str:
    return " + ".join(f"{amount:g} {name}" for name, amount in sorted(bundle.items()))


def start_workers(settings: Settings) -> list[Worker]:
    """The workers, each with the model loaded, or ClusterError: no room for them (within seconds), or their
    specs differ (one batch, one model: named, with which worker has what)."""
    remote = ray.remote(max_restarts=-1, max_task_retries=0)(RerankWorker)
    bundles = _bundles(settings.cluster.ray_workers)
    group = _reserve(bundles)
    actors = [remote.options(num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0),
                             scheduling_strategy=PlacementGroupSchedulingStrategy(
                                 placement_group=group, placement_group_bundle_index=index)).remote(settings)
              for index, bundle in enumerate(bundles)]
    try:
        specs = ray.get([actor.spec.remote() for actor in actors], timeout=START_TIMEOUT_S)
    except GetTimeoutError:
        raise ClusterError(f"the workers did not start within {START_TIMEOUT_S:.0f} s: the cluster may lack the "
                           "resources (see `ray status`)") from None
    workers = [Worker(actor=actor, spec=spec) for actor, spec in zip(actors, specs, strict=True)]
    if (problem := disagreement(specs)) is not None:
        stop_workers(workers)
        raise ClusterError(f"--ray: the workers differ, and one batch needs one model: {problem}; give --model, "
                           "--budget and --dtype, and the same weights on every node")
    return workers


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

    def new_run(item: BatchQuery) -> Run:
        return cls.new_run(item.query.text, item.candidates, instruction=item.query.instruction,
                           settings=settings.rerank)

    work, progress = plan_batch(inputs, store, new_run)
    report(progress)
    if not work:
        return progress
    queue: asyncio.Queue[Work] = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)
    tries: dict[str, int] = {}
    entries: dict[str, list[CacheEntry]] = {}
    """Each unfinished query's judgment-cache entries so far: what its retry's worker replays."""
    cache = store.judgment_cache()
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
                await rerank_query(item, store, worker.events(item, entries.setdefault(query_id, []), cache),
                                   progress, report)
            except LOST as error:
                again = item.again(store, new_run)
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
            entries.pop(query_id, None)
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
        cache.close()
    return progress
