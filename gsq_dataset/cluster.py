"""Connecting to Ray: a local instance on loopback (the default), or an existing cluster by address.

Local mode starts its own Ray instance bound to 127.0.0.1, in its own temporary folder. Ray 2.60
needs two settings for that (measured): RAY_AUTH_MODE=disabled (token authentication is on by
default) and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (otherwise Ray rewrites 127.0.0.1 to the
machine's interface address). A cluster started with `ray start` is joined as it is configured:
its address must answer within a bounded time, else the run ends with one error line.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

from gsq_core.errors import GSQError, first_line

from .resources import NodeResources

LOOPBACK_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LOOPBACK_ADDRESS = "127.0.0.1"


class ClusterError(GSQError):
    """The Ray cluster cannot be reached or used."""


def ray_address(option: str | None) -> str | None:
    """--ray-address, else RAY_ADDRESS from the environment, else None (start a local instance)."""
    return option or os.environ.get("RAY_ADDRESS") or None


@dataclass
class RaySession:
    """An open Ray connection: the alive nodes, and the terminal (Ray's own output goes to the log)."""

    nodes: list[NodeResources]
    console: TextIO


@contextmanager
def ray_session(
    address: str | None, num_cpus: int | None = None, timeout_s: float = 30.0, log_path: Path | None = None
) -> Iterator[RaySession]:
    """Ray connected (local instance or cluster) for the duration. With log_path, everything written
    to this process's stdout and stderr meanwhile (Ray's C++ core worker lines, its Python warnings,
    the workers' forwarded output) goes to that file; the last lines are shown when the run fails."""
    if address is not None:
        check_address_answers(address, timeout_s)
    with _output_to(log_path) as console:
        with _connected(address, num_cpus, timeout_s, console):
            yield RaySession(alive_nodes(), console)


@contextmanager
def _output_to(log_path: Path | None, tail_lines: int = 20) -> Iterator[TextIO]:
    """File descriptors 1 and 2 redirected to log_path for the duration; yields a stream to the terminal."""
    if log_path is None:
        yield sys.stderr
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    console = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    failed = False
    try:
        yield console
    except BaseException:
        failed = True
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for descriptor in saved:
            os.close(descriptor)
        console.close()
        if failed:
            lines = Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()[-tail_lines:]
            if lines:
                sys.stderr.write(f"Ray's log ({log_path}), last lines:\n" + "\n".join(lines) + "\n")
                sys.stderr.flush()


@contextmanager
def _connected(address: str | None, num_cpus: int | None, timeout_s: float, console: TextIO) -> Iterator[None]:
    """ray.init on a local instance (address None) or the cluster at address; ray.shutdown after."""
    temp_dir = None
    if address is None:
        os.environ.update(LOOPBACK_ENV)  # for this process and the local instance it starts
        temp_dir = tempfile.mkdtemp(prefix="gsq-ray-")
        init_kwargs = dict(
            address="local",
            num_cpus=num_cpus,
            _node_ip_address=LOOPBACK_ADDRESS,
            include_dashboard=False,
            _temp_dir=temp_dir,
        )
    else:
        if num_cpus is not None:
            raise ClusterError("--num-cpus sizes a local Ray instance; a cluster's nodes set theirs with `ray start`")
        if is_loopback(address):  # a cluster on this machine, started with the same settings (docs/tokenize.md)
            for key, value in LOOPBACK_ENV.items():
                os.environ.setdefault(key, value)
        init_kwargs = dict(address=address)
    import ray  # only now: Ray reads the settings above when it is imported

    try:
        with _deadline(timeout_s if address is not None else max(timeout_s, 120.0), address, console):
            ray.init(configure_logging=False, logging_level=logging.WARNING, log_to_driver=True, **init_kwargs)
    except ConnectionError as error:
        raise ClusterError(f"--ray-address {address}: cannot connect ({first_line(error)})") from None
    try:
        yield
    finally:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def alive_nodes() -> list[NodeResources]:
    """Logical CPU and GPU counts of the alive nodes."""
    import ray

    return [
        NodeResources(float(node["Resources"].get("CPU", 0)), float(node["Resources"].get("GPU", 0)))
        for node in ray.nodes()
        if node.get("Alive")
    ]


def is_loopback(address: str) -> bool:
    """Whether a Ray address points at this machine's loopback interface."""
    host = address.split("://", 1)[-1].rpartition(":")[0]
    return host == "localhost" or host.startswith("127.")


def check_address_answers(address: str, timeout_s: float) -> None:
    """ClusterError unless host:port of a Ray address accepts a TCP connection within timeout_s."""
    if address in ("auto", "local"):
        return
    host_port = address.split("://", 1)[-1].rstrip("/")
    host, _, port_text = host_port.rpartition(":")
    if not host or not port_text.isdigit():
        raise ClusterError(f"--ray-address {address!r} is not HOST:PORT (e.g. 127.0.0.1:6379) or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout_s):
            pass
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError | socket.timeout) else (error.strerror or str(error))
        raise ClusterError(f"--ray-address {address}: nothing answers there ({reason}); is the Ray head running?") from None


@contextmanager
def _deadline(timeout_s: float, address: str | None, console: TextIO) -> Iterator[None]:
    """ray.init cannot be cancelled: if it has not returned in time, end the process with one error line."""

    def give_up() -> None:
        where = address or "the local Ray instance"
        console.write(f"error: {where}: Ray did not connect within {timeout_s:g} s\n")
        console.flush()
        os._exit(2)

    timer = threading.Timer(timeout_s + 5.0, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
