"""Test lanes and worker groups, from the fixtures each test takes (a pytest plugin, loaded by conftest.py).

Markers: ``vllm`` (takes a vLLM fixture, or starts vLLM of its own: marked by hand), ``browser`` (takes Chromium)
and ``install`` (builds a fresh virtual environment). ``pytest -m "not vllm and not browser and not install"`` is
the fast lane; ``make test`` runs everything.

Under pytest-xdist, tests that start vLLM run in one group, one after another, so that no two load vLLM at once
(memory) and the shared vLLM fixtures start once; each shared fixture is stopped after its last test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch

SHARED_VLLM = ("vllm_engine", "vllm_servers")
"""Session fixtures that each hold vLLM: started by the first test that takes one, stopped after the last."""
LANES = {"vllm": SHARED_VLLM, "browser": ("browser", "page"), "install": ("fresh_venv",)}
"""Each lane's marker, by the fixtures that put a test in it."""
VLLM_GROUP = "vllm"
"""The xdist group of every test that starts vLLM (a shared fixture, or the ``vllm`` mark): one worker runs them
one after another, so that no two of them load vLLM at once (memory) and the shared ones start once."""


def pytest_configure(config: pytest.Config) -> None:
    """The lanes' markers; and each xdist worker's torch (the transformers engine, the dense encoder) gets its
    share of the cores: with all of them each, the workers' OpenMP threads wait on each other (a demo-model
    decoding step of a 16-row batch, measured beside two busy processes: 1.8 s with 2 threads, 0.86 s with 1;
    0.47 s alone with 2)."""
    config.addinivalue_line("markers", "vllm: starts vLLM (a shared vLLM fixture, or vLLM processes of its own: "
                                       "mark those by hand); runs in the xdist group of tests that start vLLM")
    config.addinivalue_line("markers", "browser: drives Chromium")
    config.addinivalue_line("markers", "install: builds a fresh virtual environment and installs into it")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


_last_user: dict[str, pytest.Item] = {}
_stoppers: dict[str, Callable[[], None]] = {}


def stop_after_last_user(fixture: str, stop: Callable[[], None]) -> None:
    """Call ``stop`` after the last test that takes the shared ``fixture`` (not at the session's end)."""
    _stoppers[fixture] = stop


def _taken(item: pytest.Item, fixtures: tuple[str, ...]) -> list[str]:
    """Those of ``fixtures`` a test takes, named or as a parameter it turns into one (``request.getfixturevalue``)."""
    callspec = getattr(item, "callspec", None)
    parameters = list(callspec.params.values()) if callspec is not None else []
    return [name for name in fixtures if name in getattr(item, "fixturenames", ()) or name in parameters]


def _vllm_rank(item: pytest.Item) -> int | None:
    """Where a test that starts vLLM runs in its group: in-process vLLM first (the servers load meanwhile), then
    the servers' other users, then tests with vLLM of their own; None for a test that starts none."""
    shared = _taken(item, SHARED_VLLM)
    if "vllm_engine" in shared:
        return 0
    if shared:
        return 1
    return 2 if item.get_closest_marker("vllm") else None


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """Each test gets the markers of the lanes its fixtures put it in. Tests that start vLLM run in one xdist
    group, module by module in ``_vllm_rank`` order (so that module fixtures are set up once); every other module
    is a group of its own. The shared fixtures are stopped after their last test. A wrapper, so that the groups are
    marked before pytest-xdist reads them (and ``-m`` deselects by the lanes' markers after), and checked after:
    where xdist could not tag the tests with their group (a pytest it does not know), the tests that start vLLM
    would run on every worker at once, so they fail before they start anything."""
    ranks: dict[object, int] = {}
    for item in items:
        for marker, fixtures in LANES.items():
            if _taken(item, fixtures) and not item.get_closest_marker(marker):
                item.add_marker(marker)
        rank = _vllm_rank(item)
        item.add_marker(pytest.mark.xdist_group(VLLM_GROUP if rank is not None else item.nodeid.split("::")[0]))
        if rank is not None:
            ranks[item.module] = min(rank, ranks.get(item.module, rank))
    if ranks:
        modules = sorted(ranks, key=ranks.__getitem__)  # stable: in collection order within a rank
        together = [item for module in modules for item in items if item.module is module]
        first = min(items.index(item) for item in together)
        items[first:] = [*together, *(item for item in items[first:] if item.module not in ranks)]
        _last_user.update({name: item for item in items for name in _taken(item, SHARED_VLLM)})
    yield
    ungrouped = [item for item in items if _vllm_rank(item) is not None and not item.nodeid.endswith(f"@{VLLM_GROUP}")]
    if getattr(config.option, "loadgroup", False):
        _ungrouped.update(ungrouped)


_ungrouped: set[pytest.Item] = set()
UNGROUPED = ("pytest-xdist did not put the tests that start vLLM in one group (pytest-dev/pytest-xdist#1386), so they"
             " would load vLLM on every worker at once: install pytest<9.2 (`make test` does) or use TEST_WORKERS=0")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item in _ungrouped:
        pytest.fail(UNGROUPED, pytrace=False)


def pytest_runtest_teardown(item: pytest.Item) -> None:
    for name, last in _last_user.items():
        if last is item and name in _stoppers:
            _stoppers.pop(name)()
