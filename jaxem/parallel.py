"""Data parallelism on JAX's own runtime: rows sharded over a device mesh, on one host or many.

Statistics add over data points, so a fit over data split across devices is the same EM: every
device reduces its own rows chunk by chunk, ``lax.psum`` adds the statistics over the ``"data"``
axis of the mesh, and every device then takes the same (replicated) M-step. Restarts can share the
mesh: its ``"restarts"`` axis splits the lanes, its ``"data"`` axis the rows.

A shard that would be shorter than the others is padded with rows of weight 0, which the E-step
excludes with ``where``, so padding never changes the result.

Across hosts this is JAX's multi-controller runtime: every process runs the same program on the rows
it holds (see :func:`initialize_distributed` and :func:`process_rows`).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxem.core.engine import (
    EM,
    FitResult,
    _check_iterations,
    _resolve,
    _run,
    best_restart,
    is_key,
    prepare_data,
)
from jaxem.core.estep import num_rows
from jaxem.core.mstep import ClosedForm, Gradient
from jaxem.core.precision import jit
from jaxem.core.subsample import sample_rows, sample_size

Array = jax.Array

DATA_AXIS = "data"
RESTART_AXIS = "restarts"

__all__ = [
    "DATA_AXIS",
    "RESTART_AXIS",
    "data_mesh",
    "fit_restarts_sharded",
    "fit_sharded",
    "initialize_distributed",
    "process_rows",
    "shard_rows",
]


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: list[int] | None = None,
) -> None:
    """Join this process to a multi-host run (a thin, checked wrapper of ``jax.distributed``).

    Call it once per process, before any other JAX work. With no arguments JAX detects the cluster
    (SLURM, Open MPI, Kubernetes, Cloud TPU); otherwise pass all three of the coordinator's
    ``host:port`` (process 0's host), the number of processes and this process's id.

    Example (two processes on one machine, each in its own shell)::

        jaxem.parallel.initialize_distributed("127.0.0.1:12345", num_processes=2, process_id=0)
        jaxem.parallel.initialize_distributed("127.0.0.1:12345", num_processes=2, process_id=1)
    """
    given = [coordinator_address is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError(
            "Pass coordinator_address, num_processes and process_id together, or none of them "
            "to let JAX detect the cluster (SLURM, Open MPI, Kubernetes, Cloud TPU)."
        )
    if num_processes is not None:
        if not isinstance(num_processes, int) or num_processes < 1:
            raise ValueError(f"num_processes must be a positive integer, got {num_processes!r}.")
        if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
            raise ValueError(
                f"process_id must be an integer in [0, {num_processes}), got {process_id!r}."
            )
        if ":" not in str(coordinator_address):
            raise ValueError(
                f"coordinator_address must be 'host:port', got {coordinator_address!r}."
            )
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )


def process_rows(num_points: int) -> slice:
    """The rows of a ``num_points``-row dataset that this process should load (near-equal blocks).

    Example:
        >>> process_rows(10)  # one process holds everything
        slice(0, 10, None)
    """
    count, index = jax.process_count(), jax.process_index()
    bounds = np.linspace(0, num_points, count + 1).round().astype(int)
    return slice(int(bounds[index]), int(bounds[index + 1]))


def data_mesh(num_restart_shards: int = 1, devices: Any = None) -> Mesh:
    """A ``("restarts", "data")`` mesh over ``devices`` (default: every device of every process).

    ``num_restart_shards`` devices groups run different restarts; the rest of the devices split the
    rows. Under several processes keep the default of 1, so that the rows span the processes.

    Example:
        >>> data_mesh().axis_names
        ('restarts', 'data')
    """
    devices = np.asarray(jax.devices() if devices is None else devices, dtype=object).ravel()
    if (
        not isinstance(num_restart_shards, int)
        or num_restart_shards < 1
        or devices.size % num_restart_shards
    ):
        raise ValueError(
            f"num_restart_shards must be a positive divisor of the {devices.size} devices, got "
            f"{num_restart_shards!r}."
        )
    return Mesh(devices.reshape(num_restart_shards, -1), (RESTART_AXIS, DATA_AXIS))


def _process_block(mesh: Mesh, num_global: int) -> tuple[int, int]:
    """First global row and row count that this process's devices hold along the data axis."""
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    ranges = [
        index[0].indices(num_global)[:2]
        for index in sharding.addressable_devices_indices_map((num_global,)).values()
    ]
    start, stop = min(r[0] for r in ranges), max(r[1] for r in ranges)
    return start, stop - start


class _Placed(NamedTuple):
    x: Any
    weights: Array | None
    num_real_rows: int  # over all processes, without padding
    row_offsets: Array  # per data shard: the row number (in the unpadded data) of its first row


def shard_rows(x: Any, weights: Any = None, mesh: Mesh | None = None) -> tuple[Any, Array | None]:
    """Place this process's rows on the mesh, sharded along the data axis, padded with weight 0.

    Each process passes only the rows it holds (all of them on one host). Shards are padded to equal
    length with zero rows of weight 0; then ``weights`` is returned even if it was ``None`` (ones on
    the real rows). The rows are copied shard by shard, never as one padded host copy.

    Returns:
        ``(x, weights)`` as global arrays, the rows of process 0 first.
    """
    placed = _place_rows(x, weights, data_mesh() if mesh is None else mesh)
    return placed.x, placed.weights


def _place_rows(x: Any, weights: Any, mesh: Mesh) -> _Placed:
    x = jax.tree.map(np.asarray, x)
    n_local = num_rows(x)
    if weights is not None:
        weights = np.asarray(weights)
        if weights.shape != (n_local,):
            raise ValueError(
                f"weights has shape {weights.shape} but x has {n_local} rows: pass one weight per "
                "row."
            )
    # The first row goes through the engine's own checks, which also convert the dtype (and warn
    # when float64 data meet JAX's 32-bit mode).
    head = jax.tree.map(lambda a: a[:1], x)
    dtypes = [leaf.dtype for leaf in jax.tree.leaves(prepare_data(head)[0])]

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        counts = np.asarray(multihost_utils.process_allgather(np.asarray(n_local))).ravel()
    else:
        counts = np.asarray([n_local])
    shards_per_process = max(mesh.shape[DATA_AXIS] // len(counts), 1)
    per_process = -(-int(counts.max()) // shards_per_process) * shards_per_process
    num_global = per_process * len(counts)
    start, block = _process_block(mesh, num_global)
    if block != per_process:
        raise ValueError(
            f"This process's devices hold {block} of {num_global} rows, not its share "
            f"{per_process}: build the mesh with the data axis spanning the processes "
            "(data_mesh() with num_restart_shards=1)."
        )
    padded = bool(np.any(counts != per_process))

    def local_rows(
        leaf: np.ndarray, dtype: Any, fill: float, index: tuple[slice, ...]
    ) -> np.ndarray:
        lo, hi, _ = index[0].indices(num_global)
        lo, hi = lo - start, hi - start
        rows = np.asarray(leaf[min(lo, n_local) : min(hi, n_local)], dtype=dtype)
        if hi > n_local:
            pad = np.full((hi - max(lo, n_local), *leaf.shape[1:]), fill, dtype)
            rows = np.concatenate([rows, pad])
        return rows

    def place(leaf: np.ndarray, dtype: Any, fill: float) -> Array:
        sharding = NamedSharding(mesh, P(DATA_AXIS, *([None] * (leaf.ndim - 1))))
        return jax.make_array_from_callback(
            (num_global, *leaf.shape[1:]), sharding, partial(local_rows, leaf, dtype, fill)
        )

    leaves, treedef = jax.tree.flatten(x)
    x_global = treedef.unflatten([place(a, t, 0.0) for a, t in zip(leaves, dtypes, strict=True)])

    # Padding sits at the end of each process's block, so a shard's real rows are consecutive.
    num_shards = mesh.shape[DATA_AXIS]
    shard_length = num_global // num_shards
    first = np.arange(num_shards) * shard_length
    process = first // per_process
    offsets = np.concatenate([[0], np.cumsum(counts)])[process] + first - process * per_process
    offsets = jax.make_array_from_callback(
        (num_shards,), NamedSharding(mesh, P(DATA_AXIS)), lambda i: offsets[i].astype(np.int32)
    )
    if weights is None and padded:
        weights = np.ones(n_local, dtypes[0])
    if weights is not None:
        weights = place(weights, dtypes[0], 0.0)
    return _Placed(x_global, weights, int(counts.sum()), offsets)


def _lanes_on_mesh(
    algo: EM, init: Any, placed: _Placed, user_weights: bool, mesh: Mesh, lanes: int | None
) -> Any:
    """Initial parameters with a leading lane axis, sharded over the restart axis.

    From keys, the rule is :func:`jaxem.core.subsample.initial_params`'s: the model initialises
    from all rows when there are at most ``sample_size`` of them (gathered, a bounded size), else
    from a sample whose rows every shard contributes in place, so no device ever holds more than
    its shard and the sample, and the result equals a fit's on one device.
    """
    lane_sharding = NamedSharding(mesh, P(RESTART_AXIS))
    if is_key(init):
        keys = init
        single = init.ndim == (0 if jax.dtypes.issubdtype(init.dtype, jax.dtypes.prng_key) else 1)
        if single:
            keys = init[None] if lanes is None else jax.random.split(init, lanes)
        size = sample_size(placed.x)
        if placed.num_real_rows > size:
            keys = jax.device_put(keys, lane_sharding)
            return _init_from_sample(
                algo.model,
                mesh,
                size,
                user_weights,
                keys,
                placed.x,
                placed.weights,
                placed.row_offsets,
            )
        keys = jax.device_put(keys, NamedSharding(mesh, P()))
        init_lanes = jit(
            jax.vmap(algo.model.init, in_axes=(0, None, None)), out_shardings=lane_sharding
        )
        return init_lanes(keys, placed.x, placed.weights)
    if lanes is None:
        init = jax.tree.map(lambda a: jnp.asarray(a)[None], init)
    return jax.device_put(init, lane_sharding)


@partial(jit, static_argnames=("model", "mesh", "size", "weighted"))
def _init_from_sample(
    model: Any,
    mesh: Mesh,
    size: int,
    weighted: bool,
    keys: Array,
    x: Any,
    weights: Array | None,
    row_offsets: Array,
) -> Any:
    def local(keys: Array, x: Any, weights: Array | None, row_offsets: Array) -> Any:
        def one(key: Array) -> Any:
            key_sample, key_init = jax.random.split(key)
            sample, sample_weights = sample_rows(
                key_sample,
                x,
                weights,
                size,
                weighted=weighted,
                axis_name=DATA_AXIS,
                row_offset=row_offsets[0],
            )
            return model.init(key_init, sample, sample_weights)

        return jax.vmap(one)(keys)

    specs = (P(RESTART_AXIS), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS))
    return jax.shard_map(
        local, mesh=mesh, in_specs=specs, out_specs=P(RESTART_AXIS), check_vma=False
    )(keys, x, weights, row_offsets)


@partial(jit, static_argnames=("algo", "mesh", "max_iter", "verbose"))
def _fit_lanes(
    algo: EM, mesh: Mesh, params: Any, x: Any, weights: Any, tol: Any, max_iter: int, verbose: int
) -> FitResult:
    # Statistics, and the M-step's own passes over the data (a gradient M-step's Q and its
    # gradient), add across the data axis.
    mstep = dataclasses.replace(algo.mstep, axis_name=DATA_AXIS)
    local_algo = dataclasses.replace(algo, axis_name=DATA_AXIS, mstep=mstep)

    def local(params: Any, x: Any, weights: Any, tol: Any) -> FitResult:
        return jax.vmap(lambda p: _run(local_algo, p, x, weights, tol, max_iter, verbose))(params)

    specs = (P(RESTART_AXIS), P(DATA_AXIS), P(DATA_AXIS), P())
    # The loop state starts replicated and becomes device-varying only in type (its values are
    # psum-reduced), which the while_loop's carry check would reject: skip that check.
    return jax.shard_map(
        local, mesh=mesh, in_specs=specs, out_specs=P(RESTART_AXIS), check_vma=False
    )(params, x, weights, tol)


def _fit_on_mesh(
    algo: EM,
    init: Any,
    x: Any,
    weights: Any,
    mesh: Mesh | None,
    lanes: int | None,
    max_iter: int,
    tol: float,
    verbose: int,
) -> FitResult:
    if not isinstance(algo.mstep, (ClosedForm, Gradient)):
        raise ValueError(
            f"Sharded fits need an M-step that sums its passes over the data across devices: "
            f"jaxem.ClosedForm or jaxem.Gradient, got {type(algo.mstep).__name__}. Use jaxem.fit "
            "on one device for this M-step."
        )
    _check_iterations(max_iter, tol)
    mesh = data_mesh() if mesh is None else mesh
    restart_shards = mesh.shape[RESTART_AXIS]
    if lanes is not None and lanes % restart_shards:
        raise ValueError(
            f"num_restarts={lanes} is not a multiple of the mesh's {restart_shards} restart "
            "shards: choose a multiple, or a mesh with fewer restart shards."
        )
    if lanes is None and restart_shards != 1:
        raise ValueError("A single fit needs a mesh with 1 restart shard: use data_mesh().")
    weights_given = weights is not None
    placed = _place_rows(x, weights, mesh)
    x, weights = prepare_data(placed.x, placed.weights)
    placed = placed._replace(x=x, weights=weights)
    algo = _resolve(algo, x, 1 if lanes is None else lanes)
    params = _lanes_on_mesh(algo, init, placed, weights_given, mesh, lanes)
    tol = jnp.asarray(tol, jax.tree.leaves(x)[0].dtype)
    return _fit_lanes(algo, mesh, params, x, weights, tol, max_iter, verbose)


def fit_sharded(
    algo: EM,
    init: Any,
    x: Any,
    weights: Any = None,
    *,
    mesh: Mesh | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    verbose: int = 0,
) -> FitResult:
    """:func:`jaxem.fit` with the rows sharded over a device mesh (and over processes).

    ``x`` (and ``weights``) are the rows this process holds: all of them on one host, its own shard
    under several processes (every process calls this with the same other arguments). From the
    same initial parameters the result equals :func:`jaxem.fit` on all the rows, to rounding. A key
    draws the same initial parameters as :func:`jaxem.fit` does, from a bounded sample of the rows
    that the shards contribute in place (see :mod:`jaxem.core.subsample`).

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (1001, 2))
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2, covariance_type="diag")))
        >>> result = jaxem.parallel.fit_sharded(algo, jax.random.key(0), x, max_iter=20)
        >>> result.params.weights.shape
        (2,)
    """
    result = _fit_on_mesh(algo, init, x, weights, mesh, None, max_iter, tol, verbose)
    return jax.tree.map(lambda a: a[0], result)


def fit_restarts_sharded(
    algo: EM,
    init: Any,
    x: Any,
    weights: Any = None,
    *,
    num_restarts: int | None = None,
    mesh: Mesh | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    verbose: int = 0,
) -> tuple[FitResult, FitResult]:
    """:func:`jaxem.fit_restarts` on a ``restarts x data`` mesh: lanes split over one axis, rows
    over the other.

    ``init`` is a key (split into ``num_restarts`` keys), a batch of keys, or parameters with a
    leading restart axis; the number of lanes must be a multiple of the mesh's restart shards.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (500, 2))
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)))
        >>> best, lanes = jaxem.parallel.fit_restarts_sharded(
        ...     algo, jax.random.key(0), x, num_restarts=4, max_iter=20)
        >>> lanes.status.shape
        (4,)
    """
    if is_key(init):
        single = init.ndim == (0 if jax.dtypes.issubdtype(init.dtype, jax.dtypes.prng_key) else 1)
        if single and (num_restarts is None or num_restarts < 1):
            raise ValueError("num_restarts must be a positive integer when init is one key.")
        lanes = num_restarts if single else init.shape[0]
    else:
        lanes = jax.tree.leaves(init)[0].shape[0]
    results = _fit_on_mesh(algo, init, x, weights, mesh, lanes, max_iter, tol, verbose)
    best = best_restart(results)
    return jax.tree.map(lambda a: a[best], results), results
