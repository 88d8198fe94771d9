"""Where an ensemble's arrays live: the member axis sharded over a mesh of every device, of every process.

Arrays are built from host copies that every process holds in full (an ensemble's initial state is a pure
function of its configs), each process supplying the pieces its own devices hold, so one code path serves one
device, several devices and several hosts under ``jax.distributed``.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MEMBERS = "members"


def member_mesh(devices=None) -> Mesh:
    """A one-axis mesh over ``devices`` (default: every device of every process)."""
    return Mesh(np.array(jax.devices() if devices is None else devices), (MEMBERS,))


def padded_count(members: int, mesh: Mesh) -> int:
    """Members rounded up to a multiple of the device count (the padding repeats member 0 and is discarded)."""
    return -(-members // mesh.size) * mesh.size


def sharding(mesh: Mesh, stacked: bool) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(MEMBERS) if stacked else PartitionSpec())


def put(tree, mesh: Mesh, *, stacked: bool):
    """Global arrays of the host arrays in ``tree``: split along the leading member axis (``stacked``) or
    replicated on every device."""
    target = sharding(mesh, stacked)

    def place(leaf):
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, target, lambda index: host[index])

    return jax.tree.map(place, tree)


def spans_processes(mesh: Mesh) -> bool:
    """Whether ``mesh`` holds devices of more than one process (then every process must join its collectives)."""
    return len({device.process_index for device in mesh.devices.flat}) > 1


def fetch(tree):
    """Host (numpy) copies of global arrays, gathered from every process where some are held elsewhere."""
    if any(not leaf.is_fully_addressable for leaf in jax.tree.leaves(tree)):
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, jax.device_get(tree))


def barrier(name: str, mesh: Mesh | None = None) -> None:
    """Wait until every process reaches ``name``: every process of ``mesh`` (default: of the job)."""
    if (jax.process_count() > 1) if mesh is None else spans_processes(mesh):
        multihost_utils.sync_global_devices(name)


def initialize_distributed(coordinator: str = "", num_processes: int = 0, process_id: int = -1,
                           timeout: float = 300.0) -> None:
    """Join a multi-process job with JAX's own runtime (``jax.distributed``). With a coordinator, every process
    first meets the others there (:func:`lorasec.training.rendezvous.meet`: a line saying what it waits for, and
    one line when ``timeout`` seconds pass without them); without one, JAX reads the job from the cluster's
    environment (SLURM, Open MPI, Kubernetes, ...). CPU collectives use gloo."""
    from lorasec.training import rendezvous

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if coordinator:
        job = rendezvous.Job(coordinator, num_processes, process_id, timeout)
        left = rendezvous.meet(job)
        kwargs.update(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                      initialization_timeout=int(max(left, 60.0)))
    jax.distributed.initialize(**kwargs)
