"""Cost of exact EM with missing values: seconds per EM iteration with 20% of entries missing.

For each covariance type, on the same data in this process: jaxem with ``MissingValues`` on the
data with holes, jaxem on the complete data (the price of marginalising), and scikit-learn's
``GaussianMixture`` on the mean-imputed data (what a user of scikit-learn does instead; it fits a
different, biased model). Every fit runs a fixed number of iterations (``tol=0``) from k-means++
starts; the compile time is excluded (one warm-up fit). Writes benchmarks/results/missing.json.

    python benchmarks/missing.py [--quick] [--repeat 3]
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

# Run as a script, this folder leads sys.path; common.py puts this checkout's jaxem after
# PYTHONPATH (so PYTHONPATH=/other/checkout measures another one).
from common import base_parser, best_time, block, machine_info, print_table, write_json  # noqa: E402
from sklearn.mixture import GaussianMixture  # noqa: E402

import jaxem  # noqa: E402

ITERATIONS = 20
NUM_COMPONENTS = 4


def data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correlated clusters and a copy with 20% of the entries NaN (every row keeps a value)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(NUM_COMPONENTS, d))
    labels = rng.integers(NUM_COMPONENTS, size=n)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d) + centres[labels]
    holed = np.where(rng.random(x.shape) < 0.2, np.nan, x)
    empty = np.all(np.isnan(holed), axis=1)
    holed[empty, 0] = x[empty, 0]
    return x, holed


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    n, d = (2_000, 6) if args.quick else (20_000, 10)
    x, holed = data(n, d)
    mean_filled = np.where(np.isnan(holed), np.nanmean(holed, axis=0), holed)
    key = jax.random.key(0)
    rows = []
    for covariance_type in ("full", "tied", "diag", "spherical"):
        gaussian = jaxem.Gaussian(NUM_COMPONENTS, covariance_type)

        def jaxem_fit(model, values):
            algo = jaxem.em(model)
            return lambda: block(jaxem.fit(algo, key, values, tol=0.0, max_iter=ITERATIONS))

        missing_fit = jaxem_fit(jaxem.Mixture(jaxem.MissingValues(gaussian)), holed)
        complete_fit = jaxem_fit(jaxem.Mixture(gaussian), x)
        sklearn = GaussianMixture(
            NUM_COMPONENTS,
            covariance_type=covariance_type,
            tol=0.0,
            max_iter=ITERATIONS,
            init_params="k-means++",
            random_state=0,
        )
        missing_s = best_time(missing_fit, repeat=args.repeat, warmup=1).best / ITERATIONS
        complete_s = best_time(complete_fit, repeat=args.repeat, warmup=1).best / ITERATIONS
        sklearn_s = (
            best_time(lambda s=sklearn: s.fit(mean_filled), repeat=args.repeat).best / ITERATIONS
        )
        rows.append(
            {
                "covariance": covariance_type,
                "n": n,
                "d": d,
                "missing_s_per_iter": missing_s,
                "complete_s_per_iter": complete_s,
                "sklearn_imputed_s_per_iter": sklearn_s,
                "missing_over_complete": missing_s / complete_s,
                "sklearn_over_missing": sklearn_s / missing_s,
            }
        )
    print_table(rows, list(rows[0]))
    path = write_json(
        "missing",
        {"machine": machine_info(), "iterations": ITERATIONS, "rows": rows},
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
