"""Data parallelism on JAX's own runtime: rows sharded over a device mesh, on one host or many.

Statistics add over data points, so a fit over data split across devices is the same EM: inside
``shard_map`` each device holds its shard as :class:`jaxem.core.rows.Rows` with the mesh's
``"data"`` axis, every pass of the kernel (the E-step's statistics, a gradient M-step's Q and its
gradient) reduces the shard chunk by chunk and ``lax.psum`` adds the results, and every device then
takes the same (replicated) M-step. The kernel is the one :func:`jaxem.fit` runs; only the rows
differ. Restarts can share the mesh: its ``"restarts"`` axis splits the lanes, its ``"data"`` axis
the rows.

A shard that would be shorter than the others is padded with copies of a real row at weight 0,
which every reduction excludes with ``where``, so padding never changes the result (and, being a
valid row of the family, never puts a non-finite value in a gradient).

Across hosts this is JAX's multi-controller runtime: every process runs the same program on the rows
it holds (see :func:`initialize_distributed` and :func:`process_rows`).
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxem.core.algorithm import EM
from jaxem.core.estep import num_rows
from jaxem.core.inputs import (
    check_iterations,
    first_row,
    is_key,
    num_lanes,
    prepare_data,
    restart_keys,
)
from jaxem.core.precision import jit
from jaxem.core.rows import Rows, initial_params
from jaxem.drivers.fit import FitResult, best_restart, run_fit, sample_size_of, take_lane

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


class PlacedRows(NamedTuple):
    """Rows placed on a mesh by :func:`place_rows`.

    Attributes:
        x: the rows as global arrays sharded along the data axis, padded per process.
        row_weights: the row weights (0 on padding), or ``None`` when there is neither.
        num_real_rows: rows over all processes, without padding.
        row_offsets: per data shard, the number (in the unpadded data) of its first row.
        shard_rows: per data shard, its real rows (padding excluded).
        weighted: whether the user gave row weights.
    """

    x: Any
    row_weights: Array | None
    num_real_rows: int
    row_offsets: Array
    shard_rows: tuple[int, ...]
    weighted: bool


def shard_rows(
    x: Any, row_weights: Any = None, mesh: Mesh | None = None
) -> tuple[Any, Array | None]:
    """Place this process's rows on the mesh, sharded along the data axis, padded with weight 0.

    Each process passes only the rows it holds (all of them on one host). Shards are padded to equal
    length with zero rows of weight 0; then ``row_weights`` is returned even if it was ``None``
    (ones on the real rows). The rows are copied shard by shard, never as one padded host copy.

    Returns:
        ``(x, row_weights)`` as global arrays, the rows of process 0 first.
    """
    placed = place_rows(x, row_weights, data_mesh() if mesh is None else mesh)
    return placed.x, placed.row_weights


def place_rows(x: Any, row_weights: Any, mesh: Mesh) -> PlacedRows:
    """Place this process's rows on ``mesh`` (see :func:`shard_rows`), with what the shards need
    to know of each other."""
    x = jax.tree.map(np.asarray, x)
    n_local = num_rows(x)
    if row_weights is not None:
        row_weights = np.asarray(row_weights)
        if row_weights.shape != (n_local,):
            raise ValueError(
                f"row_weights has shape {row_weights.shape} but x has {n_local} rows: pass one "
                "weight per row."
            )
    # The first row goes through the engine's own checks, which also convert the dtype (and warn
    # when float64 data meet JAX's 32-bit mode).
    dtypes = [leaf.dtype for leaf in jax.tree.leaves(first_row(x))]

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

    def local_rows(leaf: np.ndarray, dtype: Any, fill: Any, index: tuple[slice, ...]) -> np.ndarray:
        lo, hi, _ = index[0].indices(num_global)
        lo, hi = lo - start, hi - start
        rows = np.asarray(leaf[min(lo, n_local) : min(hi, n_local)], dtype=dtype)
        if hi > n_local:
            shape = (hi - max(lo, n_local), *leaf.shape[1:])
            pad = np.broadcast_to(np.asarray(fill, dtype), shape)
            rows = np.concatenate([rows, pad])
        return rows

    def place(leaf: np.ndarray, dtype: Any, fill: Any) -> Array:
        sharding = NamedSharding(mesh, P(DATA_AXIS, *([None] * (leaf.ndim - 1))))
        return jax.make_array_from_callback(
            (num_global, *leaf.shape[1:]), sharding, partial(local_rows, leaf, dtype, fill)
        )

    def last_row(leaf: np.ndarray) -> Any:
        # Padding repeats a real row, a valid value of any family (zeros may not be: log 0).
        return leaf[n_local - 1] if n_local else 0.0

    leaves, treedef = jax.tree.flatten(x)
    x_global = treedef.unflatten(
        [place(a, t, last_row(a)) for a, t in zip(leaves, dtypes, strict=True)]
    )

    # Padding sits at the end of each process's block, so a shard's real rows are consecutive.
    num_shards = mesh.shape[DATA_AXIS]
    shard_length = num_global // num_shards
    first = np.arange(num_shards) * shard_length
    process = first // per_process
    within = first - process * per_process
    offsets = np.concatenate([[0], np.cumsum(counts)])[process] + within
    shard_counts = tuple(int(c) for c in np.clip(counts[process] - within, 0, shard_length))
    offsets = jax.make_array_from_callback(
        (num_shards,), NamedSharding(mesh, P(DATA_AXIS)), lambda i: offsets[i].astype(np.int32)
    )
    weighted = row_weights is not None
    if row_weights is None and padded:
        row_weights = np.ones(n_local, dtypes[0])
    if row_weights is not None:
        row_weights = place(row_weights, dtypes[0], 0.0)
    return PlacedRows(x_global, row_weights, int(counts.sum()), offsets, shard_counts, weighted)


class ShardLayout(NamedTuple):
    """What every shard knows of the whole data (static: part of a compiled program's key)."""

    num_real_rows: int
    shard_rows: tuple[int, ...]
    weighted: bool
    chunk_size: int | None

    def rows(self, x: Any, row_weights: Array | None, row_offsets: Array) -> Rows:
        """This device's shard (inside ``shard_map``) as the rows the kernel reduces, with sums
        over the data axis."""
        return Rows(
            x,
            row_weights,
            row_offset=row_offsets[0],
            chunk_size=self.chunk_size,
            axis_name=DATA_AXIS,
            num_rows=self.num_real_rows,
            weighted=self.weighted,
            shard_rows=self.shard_rows,
        )


@partial(jit, static_argnames=("kernel", "mesh", "layout", "from_keys", "max_iter", "verbose"))
def _fit_lanes(
    kernel, mesh, layout, from_keys, init, x, row_weights, offsets, tol, max_iter, verbose
):
    def local(init: Any, x: Any, row_weights: Any, offsets: Array, tol: Array) -> FitResult:
        rows = layout.rows(x, row_weights, offsets)

        def lane(start: Any) -> FitResult:
            if from_keys:  # the one start of every driver, drawn from the shards in place
                start = initial_params(kernel.model, start, rows, sample_size_of(rows))
            return run_fit(kernel, start, rows, tol, max_iter, verbose)

        return jax.vmap(lane)(init)

    specs = (P(RESTART_AXIS), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS), P())
    # The loop state starts replicated and becomes device-varying only in type (its values are
    # psum-reduced), which the while_loop's carry check would reject: skip that check.
    return jax.shard_map(
        local, mesh=mesh, in_specs=specs, out_specs=P(RESTART_AXIS), check_vma=False
    )(init, x, row_weights, offsets, tol)


def _fit_on_mesh(
    algo: EM,
    init: Any,
    x: Any,
    row_weights: Any,
    mesh: Mesh | None,
    lanes: int | None,
    max_iter: int,
    tol: float,
    verbose: int,
) -> FitResult:
    check_iterations(max_iter, tol)
    mesh = data_mesh() if mesh is None else mesh
    restart_shards = mesh.shape[RESTART_AXIS]
    if lanes is not None and lanes % restart_shards:
        raise ValueError(
            f"num_restarts={lanes} is not a multiple of the mesh's {restart_shards} restart "
            "shards: choose a multiple, or a mesh with fewer restart shards."
        )
    if lanes is None and restart_shards != 1:
        raise ValueError("A single fit needs a mesh with 1 restart shard: use data_mesh().")
    missing = getattr(algo.model, "handles_missing", False)
    placed = place_rows(x, row_weights, mesh)
    x, row_weights = prepare_data(placed.x, placed.row_weights, allow_missing=missing)
    algo = algo.for_data(x, 1 if lanes is None else lanes)
    from_keys = is_key(init)
    if from_keys and lanes is None:
        init = init[None]
    elif lanes is None:
        init = jax.tree.map(lambda a: jnp.asarray(a)[None], init)
    init = jax.device_put(init, NamedSharding(mesh, P(RESTART_AXIS)))
    tol = jnp.asarray(tol, jax.tree.leaves(x)[0].dtype)
    layout = ShardLayout(placed.num_real_rows, placed.shard_rows, placed.weighted, algo.chunk_size)
    return _fit_lanes(
        algo.kernel,
        mesh,
        layout,
        from_keys,
        init,
        x,
        row_weights,
        placed.row_offsets,
        tol,
        max_iter,
        verbose,
    )


def fit_sharded(
    algo: EM,
    init: Any,
    x: Any,
    row_weights: Any = None,
    *,
    mesh: Mesh | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    verbose: int = 0,
) -> FitResult:
    """:func:`jaxem.fit` with the rows sharded over a device mesh (and over processes).

    ``x`` (and ``row_weights``) are the rows this process holds: all of them on one host, its own
    shard under several processes (every process calls this with the same other arguments). From the
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
    result = _fit_on_mesh(algo, init, x, row_weights, mesh, None, max_iter, tol, verbose)
    return take_lane(result, 0)


def fit_restarts_sharded(
    algo: EM,
    init: Any,
    x: Any,
    row_weights: Any = None,
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
        init = restart_keys(init, num_restarts)
    results = _fit_on_mesh(
        algo, init, x, row_weights, mesh, num_lanes(init), max_iter, tol, verbose
    )
    return take_lane(results, best_restart(results)), results
