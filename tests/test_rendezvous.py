"""Multi-host flags are checked together, and processes meet at the coordinator before JAX's initialisation, with
a line saying what they wait for and one line when the wait runs out (JAX itself aborts with a stack trace)."""

import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorasec.core.errors import ConfigError
from lorasec.training.rendezvous import Job, RendezvousError, job_from_flags, meet


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


COORDINATORS = st.sampled_from(["", "127.0.0.1:12355", "host0:1", "nohost", ":80", "h:0", "h:65536", "h:x",
                                "a:b:123", "h:-1"])


@settings(max_examples=300, deadline=None)
@given(COORDINATORS, st.integers(-3, 6), st.integers(-3, 8), st.sampled_from([-1.0, 0.0, 0.5, 300.0]))
def test_any_combination_of_flags_is_a_job_a_single_process_or_one_line(coordinator, count, index, timeout):
    try:
        job = job_from_flags(coordinator, count, index, timeout)
    except ConfigError as err:
        assert "\n" not in str(err) and str(err).startswith("sweep --")
        return
    if job is None:
        assert count <= 1
        return
    host, port = job.address
    assert job.num_processes >= 2 and 0 <= job.process_id < job.num_processes and host and 0 < port < 65536
    assert job.timeout > 0


def test_the_named_mistakes():
    with pytest.raises(ConfigError, match="--num-processes 0: must be >= 1"):
        job_from_flags("127.0.0.1:1234", 0, 7, 300)  # a coordinator and an index without a count
    with pytest.raises(ConfigError, match="--coordinator 'nohost': must be HOST:PORT"):
        job_from_flags("nohost", 2, 0, 300)
    with pytest.raises(ConfigError, match=r"--process-id 7: must lie in \[0, 2\)"):
        job_from_flags("h:1", 2, 7, 300)
    assert job_from_flags("h:1", 1, 0, 300) is None  # a job of one process runs alone
    assert job_from_flags("", 0, -1, 300) is None


def _meet_in_thread(job: Job, outcome: dict) -> threading.Thread:
    def run():
        try:
            outcome[job.process_id] = meet(job, say=lambda line: outcome.setdefault("said", []).append(line))
        except RendezvousError as err:
            outcome[job.process_id] = err

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_processes_meet_and_a_missing_one_is_named_in_one_line():
    port = _free_port()
    outcome: dict = {}
    threads = [_meet_in_thread(Job(f"127.0.0.1:{port}", 3, i, 20.0), outcome) for i in (1, 2, 0)]
    for thread in threads:
        thread.join()
    assert all(isinstance(outcome[i], float) and outcome[i] > 0 for i in range(3))
    assert any("process 0 of 3 waits up to 20 s for processes 1-2" in line for line in outcome["said"])
    began = time.monotonic()
    with pytest.raises(RendezvousError, match=r"processes \[2\] did not reach .* within 3 s"):
        lone: dict = {}
        thread = _meet_in_thread(Job(f"127.0.0.1:{port}", 3, 1, 6.0), lone)
        try:
            meet(Job(f"127.0.0.1:{port}", 3, 0, 3.0), say=lambda line: None)
        finally:
            thread.join()
    assert time.monotonic() - began < 15
    with pytest.raises(RendezvousError, match="no coordinator answered at .* within 0.5 s"):
        meet(Job(f"127.0.0.1:{_free_port()}", 2, 1, 0.5), say=lambda line: None)


def test_a_process_of_another_job_is_refused():
    port = _free_port()
    outcome: dict = {}
    thread = _meet_in_thread(Job(f"127.0.0.1:{port}", 3, 1, 5.0), outcome)  # thinks the job has 3
    with pytest.raises(RendezvousError, match="counts a job of 3 processes"):
        meet(Job(f"127.0.0.1:{port}", 2, 0, 5.0), say=lambda line: None)
    thread.join()
    assert isinstance(outcome[1], RendezvousError) and "refused" in str(outcome[1])
