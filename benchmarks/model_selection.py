"""Model selection grid: ``jaxem.select`` against the equivalent sequential scikit-learn loop.

The same grid (K x covariance type, the same number of k-means++ restarts per cell, the same
max_iter and tol) on the same float64 data, in the same process. jaxem is timed on its first call
(compilation included, what a user waits for once) and warm (best of ``--repeat``); scikit-learn
is timed as ``for K, type: GaussianMixture(K, type, n_init=R).fit(x).bic(x)``.

    python benchmarks/model_selection.py [--quick] [--repeat 3]
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

# Run as a script, this folder leads sys.path; common.py puts this checkout's jaxem after
# PYTHONPATH (so PYTHONPATH=/other/checkout measures another one).
from common import base_parser, best_time, first_call_time, machine_info, print_table, write_json  # noqa: E402
from sklearn.mixture import GaussianMixture  # noqa: E402

import jaxem  # noqa: E402

TYPES = ("full", "tied", "diag", "spherical")


def synthetic(num_rows: int, num_features: int, num_clusters: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(num_clusters, num_features))
    labels = rng.integers(num_clusters, size=num_rows)
    scales = rng.uniform(0.5, 1.5, size=(num_clusters, 1))
    return centres[labels] + scales[labels] * rng.normal(size=(num_rows, num_features))


def sklearn_grid(x, ks, restarts, max_iter, tol):
    table = []
    for cov in TYPES:
        for k in ks:
            gm = GaussianMixture(
                k, covariance_type=cov, n_init=restarts, init_params="k-means++",
                max_iter=max_iter, tol=tol, random_state=0,
            )  # fmt: skip
            gm.fit(x)
            table.append((k, cov, gm.bic(x)))
    return table


def jaxem_grid(x, ks, restarts, max_iter, tol):
    result = jaxem.select(x, ks, TYPES, num_restarts=restarts, key=0, max_iter=max_iter, tol=tol)
    jax.block_until_ready(result.params)
    return result


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    cases = [("old_faithful", jaxem.datasets.load_old_faithful(), range(1, 8), 10)]
    if args.quick:
        cases.append(("synthetic_2k_d3", synthetic(2_000, 3, 4), range(1, 5), 4))
    else:
        cases.append(("synthetic_20k_d5", synthetic(20_000, 5, 4), range(1, 9), 8))
    max_iter, tol = 100, 1e-3
    rows = []
    for name, x, ks, restarts in cases:
        ks = list(ks)
        first = first_call_time(lambda x=x, ks=ks, r=restarts: jaxem_grid(x, ks, r, max_iter, tol))
        warm = best_time(
            lambda x=x, ks=ks, r=restarts: jaxem_grid(x, ks, r, max_iter, tol), repeat=args.repeat
        )
        reference = best_time(
            lambda x=x, ks=ks, r=restarts: sklearn_grid(x, ks, r, max_iter, tol),
            repeat=max(1, args.repeat - 1),
        )
        chosen = jaxem_grid(x, ks, restarts, max_iter, tol).best
        sk_table = sklearn_grid(x, ks, restarts, max_iter, tol)
        sk_best = min(sk_table, key=lambda row: row[2])
        rows.append(
            {
                "case": name,
                "rows": x.shape[0],
                "cells": len(ks) * len(TYPES),
                "restarts": restarts,
                "jaxem_first_s": first,
                "jaxem_warm_s": warm.best,
                "sklearn_s": reference.best,
                "speedup_warm": reference.best / warm.best,
                "speedup_first": reference.best / first,
                "jaxem_choice": f"{chosen.num_components} {chosen.covariance_type}",
                "sklearn_choice": f"{sk_best[0]} {sk_best[1]}",
                "jaxem_bic": chosen.bic,
                "sklearn_bic": sk_best[2],
            }
        )
    print_table(
        rows,
        ["case", "rows", "cells", "restarts", "jaxem_first_s", "jaxem_warm_s", "sklearn_s",
         "speedup_warm", "speedup_first", "jaxem_choice", "sklearn_choice"],
    )  # fmt: skip
    path = write_json("select", {"machine": machine_info(), "rows": rows}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
