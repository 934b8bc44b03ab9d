"""Joining a Ray cluster (``--ray``): for batch reranking (search/batch/cluster.py) and corpus embedding
(search/retrieval/embedding.py). Ray is imported only where it is used, with an install hint."""

from __future__ import annotations

import socket
from types import ModuleType

REACH_TIMEOUT_S = 10.0
"""How long an address may take to accept a connection before it is called unreachable."""


class ClusterError(RuntimeError):
    """A cluster cannot run the work (``--ray``); the message names the address or the resource, and what to
    do."""


def ray_module() -> ModuleType:
    """Ray, or ClusterError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError("--ray needs Ray: pip install 'explainable-search[ray]'") from None
    return ray


def connect(address: str) -> ModuleType:
    """Ray, joined to the cluster at ``address`` (``auto``: the one this machine is part of), or ClusterError. An
    address is tried first with a plain connection: Ray itself retries one that does not answer for minutes."""
    ray = ray_module()
    if ray.is_initialized():
        return ray
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address != "auto" and host and port.isdigit():
        try:
            socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S).close()
        except OSError as error:
            raise ClusterError(f"--ray {address}: no Ray cluster could be reached ({error.strerror or error}); "
                               "start one with `ray start --head`") from None
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False, configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ClusterError(f"--ray {address}: no Ray cluster could be reached ({reason}); start one with "
                           "`ray start --head` (and `ray start --address HEAD:6379` on the other nodes)") from None
    return ray


def alive_nodes() -> list[dict]:
    """The cluster's nodes that are up and have a CPU (Ray's own node records)."""
    return [node for node in ray_module().nodes() if node["Alive"] and node["Resources"].get("CPU", 0) >= 1]
