"""Data parallelism on JAX's own runtime: rows sharded over a device mesh, on one host or many.

The driver lives in :mod:`jaxem.drivers.sharded`; this module gathers its public names.
"""

from jaxem.drivers.sharded import (
    DATA_AXIS,
    RESTART_AXIS,
    data_mesh,
    fit_restarts_sharded,
    fit_sharded,
    initialize_distributed,
    process_rows,
    shard_rows,
)

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
