"""Joining a Ray cluster (``--ray``): for batch reranking (search/batch/cluster.py) and corpus embedding
(search/retrieval/embedding.py). Ray is imported only where it is used, with an install hint."""

from __future__ import annotations

import socket
from types import ModuleType

REACH_TIMEOUT_S = 10.0
"""How long an address may take to answer as a Ray cluster before it is called unreachable."""


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
    """Ray, joined to the cluster at ``address`` (``auto``: the one this machine is part of), or ClusterError. The
    address Ray would dial is first asked for its cluster id, as Ray's own clients do, within
    ``REACH_TIMEOUT_S``: Ray itself retries an address that is not a cluster's for minutes, deaf to SIGTERM."""
    ray = ray_module()
    if ray.is_initialized():
        return ray
    _check_reachable(address)
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False, configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ClusterError(f"--ray {address}: no Ray cluster could be reached ({_first_line(error)}); start one "
                           "with `ray start --head` (and `ray start --address HEAD:6379` on the other nodes)") from None
    return ray


def _check_reachable(address: str) -> None:
    """ClusterError unless ``address`` is HOST:PORT (or ``auto``, or a ``ray://`` client's) and what Ray would dial
    for it answers as a Ray cluster's GCS. A Ray client address (or a Ray without the internals the GCS probe uses)
    is only tried with a plain connection."""
    client = address.startswith("ray://")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address != "auto" and not (host and port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ClusterError(f"--ray {address}: not a cluster address: give HOST:PORT (the port a number, 1 to "
                           "65535), ray://HOST:PORT or auto")
    try:  # Ray's own internals (tested with Ray 2.60): a Ray that moved them gets the plain connection
        import grpc
        from ray._private.services import canonicalize_bootstrap_address
        from ray.core.generated.gcs_service_pb2 import GetClusterIdRequest
        from ray.core.generated.gcs_service_pb2_grpc import NodeInfoGcsServiceStub
    except ImportError:
        if address == "auto":  # ray.init finds the local cluster or says there is none
            return
        client = True
    if client:
        try:
            socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S).close()
        except OSError as error:
            raise ClusterError(f"--ray {address}: no Ray cluster could be reached ({error.strerror or error}); "
                               "start one with `ray start --head`") from None
        return

    try:
        target = canonicalize_bootstrap_address(address)  # what ray.init dials: a local host becomes this node's IP
    except (ConnectionError, ValueError) as error:
        raise ClusterError(f"--ray {address}: no Ray cluster could be reached ({_first_line(error)}); start one "
                           "with `ray start --head`") from None
    if target is None:  # no cluster to join: ray.init says so
        return
    try:
        with grpc.insecure_channel(target) as channel:
            NodeInfoGcsServiceStub(channel).GetClusterId(GetClusterIdRequest(), timeout=REACH_TIMEOUT_S)
    except grpc.RpcError as error:
        reason = f"{error.code().name}: {_first_line(error.details() or 'no answer')}"
        raise ClusterError(f"--ray {address}: no Ray cluster could be reached at {target} ({reason}); start one "
                           "with `ray start --head`") from None


def _first_line(error: object) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def alive_nodes() -> list[dict]:
    """The cluster's nodes that are up and have a CPU (Ray's own node records)."""
    return [node for node in ray_module().nodes() if node["Alive"] and node["Resources"].get("CPU", 0) >= 1]
