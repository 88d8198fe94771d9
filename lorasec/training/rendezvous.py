"""Joining a multi-process job with a clear account of the wait: flags checked together, then a plain TCP meeting
of every process at the coordinator's address before ``jax.distributed.initialize``.

JAX's own initialisation aborts the process (a C++ fatal error with a stack trace) when a peer never comes; the
meeting here waits the same way, says what it waits for and for how long, and ends in one line naming the missing
processes when the time runs out. Once every process has met, the port is handed to JAX, which starts its
coordination service there.
"""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass

from lorasec.core.errors import ConfigError

GREETING = "lorasec-rendezvous"


class RendezvousError(ConfigError):
    """The processes of a job did not all meet in time, or disagree about the job."""


@dataclass(frozen=True)
class Job:
    """A multi-process job as the flags describe it (``coordinator`` empty: the cluster's environment says)."""

    coordinator: str
    num_processes: int
    process_id: int
    timeout: float

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.coordinator.rpartition(":")
        return host, int(port)


def job_from_flags(coordinator: str, num_processes: int, process_id: int, timeout: float) -> Job | None:
    """The job the sweep flags describe, checked together; None for a single process.

    Raises:
        ConfigError: one line naming the flag: a coordinator that is not HOST:PORT, a process count below 1, an
            index outside [0, count), an index or coordinator without a count, a timeout that is not positive.
    """
    if num_processes < 0 or (num_processes == 0 and (coordinator or process_id >= 0)):
        raise ConfigError(f"sweep --num-processes {num_processes}: must be >= 1 (the processes in the job); give it "
                          f"with --coordinator and --process-id")
    if timeout <= 0:
        raise ConfigError(f"sweep --timeout {timeout:g}: must be > 0 seconds")
    if coordinator:
        host, sep, port = coordinator.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"sweep --coordinator {coordinator!r}: must be HOST:PORT with a port in 1-65535, "
                              f"e.g. host0:12355")
    if num_processes and not coordinator:
        raise ConfigError(f"sweep --num-processes {num_processes}: needs --coordinator HOST:PORT (or neither, and "
                          f"--distributed to read the job from the cluster's environment)")
    if coordinator and process_id < 0:
        raise ConfigError("sweep --coordinator: needs --process-id (this process's index, 0 on the coordinator's host)")
    if num_processes and not 0 <= process_id < num_processes:
        raise ConfigError(f"sweep --process-id {process_id}: must lie in [0, {num_processes}) for --num-processes "
                          f"{num_processes}")
    if num_processes <= 1:  # no job given (one process, or the cluster's environment will say), or a job of one
        return None
    return Job(coordinator, num_processes, process_id, timeout)


def meet(job: Job, *, say=lambda line: print(line, file=sys.stderr, flush=True)) -> float:
    """Wait until every process of ``job`` has reached the coordinator's address; returns the seconds left.

    Raises:
        RendezvousError: the time ran out (naming who is missing) or a process belongs to another job.
    """
    deadline = time.monotonic() + job.timeout
    host, port = job.address
    n = job.num_processes
    if job.process_id == 0:
        others = "process 1" if n == 2 else f"processes 1-{n - 1}"
        say(f"lorasec: process 0 of {n} waits up to {job.timeout:g} s for {others} at {job.coordinator}")
        _host_meeting(port, n, deadline, job)
    else:
        say(f"lorasec: process {job.process_id} of {n} waits up to {job.timeout:g} s for the coordinator at "
            f"{job.coordinator}")
        _join_meeting(host, port, n, job.process_id, deadline, job)
    return max(deadline - time.monotonic(), 0.0)


def _host_meeting(port: int, n: int, deadline: float, job: Job) -> None:
    peers: dict[int, socket.socket] = {}
    try:
        with socket.create_server(("", port), reuse_port=False) as server:
            while len(peers) < n - 1:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = [i for i in range(1, n) if i not in peers]
                    raise RendezvousError(
                        f"sweep: processes {missing} did not reach {job.coordinator} within {job.timeout:g} s; start "
                        f"them with --coordinator {job.coordinator} --num-processes {n}, or raise --timeout")
                server.settimeout(min(remaining, 1.0))
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                conn.settimeout(max(deadline - time.monotonic(), 1.0))
                try:
                    words = conn.recv(256).decode(errors="replace").split()
                except OSError:
                    conn.close()
                    continue
                if len(words) != 3 or words[0] != GREETING or not words[1].isdigit() or not words[2].isdigit():
                    conn.close()  # someone else knocking at the port
                    continue
                pid, count = int(words[1]), int(words[2])
                problem = ("counts a job of {count} processes" if count != n else
                           "is not a process index of the job" if not 0 < pid < n else
                           "was already taken by another process" if pid in peers else "").format(count=count)
                if problem:
                    conn.sendall(f"refused: process {pid} {problem} (the coordinator expects {n})\n".encode())
                    conn.close()
                    raise RendezvousError(f"sweep: a process at {job.coordinator} gave --process-id {pid} that "
                                          f"{problem}; every process must give --num-processes {n} and its own index")
                peers[pid] = conn
            for conn in peers.values():
                conn.sendall(b"go\n")
    except OSError as err:
        raise RendezvousError(f"sweep --coordinator {job.coordinator}: cannot listen on port {job.address[1]} "
                              f"({err.strerror}); choose a free port") from None
    finally:
        for conn in peers.values():
            conn.close()


def _join_meeting(host: str, port: int, n: int, pid: int, deadline: float, job: Job) -> None:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RendezvousError(f"sweep: no coordinator answered at {job.coordinator} within {job.timeout:g} s; "
                                  f"start process 0 there, or raise --timeout")
        try:
            conn = socket.create_connection((host, port), timeout=min(remaining, 5.0))
        except OSError:  # not listening yet: knock again soon
            time.sleep(min(0.2, max(remaining, 0.0)))
            continue
        with conn:
            try:
                conn.sendall(f"{GREETING} {pid} {n}\n".encode())
                conn.settimeout(max(deadline - time.monotonic(), 0.1))
                reply = conn.recv(256).decode(errors="replace").strip()
            except TimeoutError:
                raise RendezvousError(f"sweep: the coordinator at {job.coordinator} did not start the job within "
                                      f"{job.timeout:g} s (other processes missing); raise --timeout") from None
            except OSError:
                time.sleep(1.0)  # the coordinator went away between accept and reply: knock again
                continue
        if reply == "go":
            return
        if reply.startswith("refused"):
            raise RendezvousError(f"sweep: the coordinator at {job.coordinator} {reply}")
        time.sleep(1.0)
