"""Gaussian mixture EM: jaxem against scikit-learn's GaussianMixture, same data, same start.

Both run a fixed number of EM iterations (``tol=0``) from identical initial parameters. Reported
per case:

* per-iteration seconds: for jaxem, (a warm fit of ``max_iter`` iterations minus a warm fit of 0
  iterations) / ``max_iter``, each the best of ``--repeat``, so the fixed costs of a call (input
  checks, dispatch, the final objective pass) are not counted as iterations; for scikit-learn, its
  own loop body (``_e_step`` then ``_m_step``, what ``GaussianMixture.fit`` repeats) run
  ``max_iter`` times, divided by ``max_iter``, best of ``--repeat``; the three are timed in turns
  (one call of each per round), so a busy spell on a shared machine does not fall on one only;
* jaxem's compile time (first call minus a warm call), reported apart;
* end-to-end ``fit`` seconds of both (jaxem warm; scikit-learn with
  ``init_params="random_from_data"`` so its set-up is one cheap pass);
* achieved GFLOP/s of jaxem's E+M step and its fraction of this machine's matmul peak, measured
  with a large ``jnp`` matmul in the same dtype in this run. FLOPs counted: full/tied
  ``4 N K D^2 + 8 N K D`` (whitening and second moment as dense matrix products; float64 full
  computes each symmetric product once, so its figure is an effective rate), diag/spherical
  ``8 N K D`` (the two products with the ``[N, 2 D]`` features).

Plus 32 restarts as one ``fit_restarts`` against ``n_init=32``, and peak memory at (10^6, 8, 8):
the RSS high-water mark of a fresh subprocess per library, minus the high-water mark of the same
subprocess stopped after imports and data generation (so the figure is the fit's working memory).

Run ``python benchmarks/gmm_vs_sklearn.py`` (``--quick`` for a smoke run). JSON goes to
``benchmarks/results/gmm_vs_sklearn.json``.
"""

from __future__ import annotations

import os
import time
import warnings

os.environ.setdefault("JAX_ENABLE_X64", "1")

import jax
import jax.numpy as jnp
import numpy as np

# Run as a script, this folder leads sys.path; common.py puts this checkout's jaxem after
# PYTHONPATH (so PYTHONPATH=/other/checkout measures another one).
from common import (
    base_parser,
    best_time,
    block,
    first_call_time,
    interleaved_best_times,
    machine_info,
    matmul_peak_gflops,
    peak_rss_of,
    print_table,
    write_json,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

import jaxem

FULL_CASES = [(100_000, 16, 16), (1_000_000, 8, 8), (20_000, 64, 32)]
QUICK_CASES = [(20_000, 8, 8), (50_000, 4, 4)]


def make_data(n: int, d: int, k: int, dtype: str, seed: int = 0) -> np.ndarray:
    """Points from K well-spread Gaussians with random covariances."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 4.0
    mixing = rng.normal(size=(k, d, d)) / np.sqrt(d) + np.eye(d)
    labels = rng.integers(k, size=n)
    x = centres[labels] + np.einsum("nd,nde->ne", rng.normal(size=(n, d)), mixing[labels])
    return x.astype(dtype)


def start(x: np.ndarray, k: int, covariance_type: str, seed: int = 1):
    """Uniform weights, random rows as means, the data's variance as an isotropic covariance."""
    rng = np.random.default_rng(seed)
    n, d = x.shape
    means = x[rng.choice(n, k, replace=False)].astype(np.float64)
    precision = 1.0 / float(np.var(x, axis=0).mean())
    precisions = {
        "full": np.stack([precision * np.eye(d)] * k),
        "tied": precision * np.eye(d),
        "diag": np.full((k, d), precision),
        "spherical": np.full(k, precision),
    }[covariance_type]
    return np.full(k, 1.0 / k), means, precisions


def flops_per_iteration(n: int, d: int, k: int, covariance_type: str) -> float:
    if covariance_type in ("full", "tied"):
        return 4.0 * n * k * d * d + 8.0 * n * k * d
    return 8.0 * n * k * d


def sklearn_model(k, covariance_type, weights, means, precisions, iters, **kwargs):
    return GaussianMixture(
        k,
        covariance_type=covariance_type,
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
        init_params="random_from_data",
        max_iter=iters,
        tol=0.0,
        **kwargs,
    )


def bench_case(n, d, k, covariance_type, dtype, iters, repeat, peaks):
    x_np = make_data(n, d, k, dtype)
    weights0, means0, precisions0 = start(x_np, k, covariance_type)

    family = jaxem.Gaussian(k, covariance_type=covariance_type)
    algo = jaxem.em(jaxem.Mixture(family))
    x = jnp.asarray(x_np)
    params = jax.tree.map(
        lambda a: jnp.asarray(a, dtype),
        jaxem.MixtureParams(
            jnp.asarray(weights0),
            family.params_from_precisions(jnp.asarray(means0), jnp.asarray(precisions0)),
        ),
    )

    def run_jaxem(max_iter=iters):
        return block(jaxem.fit(algo, params, x, max_iter=max_iter, tol=0.0))

    first = first_call_time(run_jaxem)
    run_jaxem(0)

    reference = sklearn_model(k, covariance_type, weights0, means0, precisions0, iters)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start_time = time.perf_counter()
        reference.fit(x_np)
        sklearn_fit_s = time.perf_counter() - start_time
    initial = (
        weights0.astype(dtype),
        means0.astype(dtype),
        reference.covariances_.copy(),
        _sk_cholesky(precisions0, covariance_type).astype(dtype),
    )

    def sklearn_loop():
        reference._set_parameters(initial)
        for _ in range(iters):
            _, log_resp = reference._e_step(x_np)
            reference._m_step(x_np, log_resp)

    timings = interleaved_best_times(
        {"jaxem": run_jaxem, "jaxem_fixed": lambda: run_jaxem(0), "sklearn": sklearn_loop},
        repeat=repeat,
    )
    jaxem_fit, jaxem_fixed, sklearn_iters = (
        timings["jaxem"],
        timings["jaxem_fixed"],
        timings["sklearn"],
    )
    compile_s = max(first - jaxem_fit.best, 0.0)
    result = run_jaxem()
    jaxem_iter = max(jaxem_fit.best - jaxem_fixed.best, 0.0) / iters
    sklearn_iter = sklearn_iters.best / iters
    gflops = flops_per_iteration(n, d, k, covariance_type) / jaxem_iter / 1e9
    return {
        "case": f"{n:.0e}x{d}x{k}",
        "cov": covariance_type,
        "dtype": dtype,
        "iters": iters,
        "jaxem_iter_ms": 1e3 * jaxem_iter,
        "sklearn_iter_ms": 1e3 * sklearn_iter,
        "speedup": sklearn_iter / jaxem_iter,
        "compile_s": compile_s,
        "jaxem_fixed_s": jaxem_fixed.best,
        "jaxem_fit_s": jaxem_fit.best,
        "sklearn_fit_s": sklearn_fit_s,
        "GFLOP/s": gflops,
        "peak_frac": gflops / peaks[dtype],
        "loglik_diff": abs(
            mean_log_likelihood(algo.model, result.params, x) - reference.score(x_np)
        )
        if dtype == "float64"
        else float("nan"),
    }


def mean_log_likelihood(model, params, x) -> float:
    """The mean log-likelihood per row at ``params`` (scikit-learn's ``score``)."""
    return float(jnp.mean(jax.nn.logsumexp(model.log_joint(params, x), axis=1)))


def _sk_cholesky(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    """scikit-learn's precision Cholesky factor from precisions (upper, flipped-lower trick)."""
    if covariance_type not in ("full", "tied"):
        return np.sqrt(precisions)
    flip = lambda a: a[..., ::-1, ::-1]  # noqa: E731
    return flip(np.linalg.cholesky(flip(precisions)))


def bench_restarts(n, d, k, restarts, iters, repeat):
    x_np = make_data(n, d, k, "float64", seed=2)
    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(k, init_method="random_rows")))
    x = jnp.asarray(x_np)

    def run_jaxem():
        return block(
            jaxem.fit_restarts(
                algo, jax.random.key(0), x, num_restarts=restarts, max_iter=iters, tol=0.0
            )
        )

    first = first_call_time(run_jaxem)
    jaxem_t = best_time(run_jaxem, repeat=repeat)
    reference = GaussianMixture(
        k, init_params="random_from_data", n_init=restarts, max_iter=iters, tol=0.0, random_state=0
    )

    def run_sklearn():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            reference.fit(x_np)

    sklearn_t = best_time(run_sklearn, repeat=max(1, repeat - 1))
    return {
        "case": f"{n:.0e}x{d}x{k}",
        "restarts": restarts,
        "iters": iters,
        "jaxem_s": jaxem_t.best,
        "sklearn_s": sklearn_t.best,
        "speedup": sklearn_t.best / jaxem_t.best,
        "compile_s": max(first - jaxem_t.best, 0.0),
    }


MEMORY_SETUP = """
import os
os.environ["JAX_ENABLE_X64"] = "1"
import numpy as np, warnings
{imports}
rng = np.random.default_rng(0)
x = rng.normal(size=({n}, {d})) + rng.integers(0, 4, size=({n}, 1))
"""

MEMORY_RUN = {
    "sklearn": (
        "from sklearn.mixture import GaussianMixture",
        "warnings.simplefilter('ignore')\n"
        "GaussianMixture({k}, init_params='random_from_data', max_iter={iters}, tol=0.0,"
        " random_state=0).fit(x)",
    ),
    "jaxem": (
        "import jax, jaxem",
        "algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian({k}, init_method='random_rows')))\n"
        "jax.block_until_ready(jaxem.fit(algo, jax.random.key(0), x, max_iter={iters}, tol=0.0))",
    ),
}


def bench_memory(n, d, k, iters):
    rows = []
    for library, (imports, run) in MEMORY_RUN.items():
        setup = MEMORY_SETUP.format(imports=imports, n=n, d=d)
        baseline = peak_rss_of(setup)
        peak = peak_rss_of(setup + run.format(k=k, iters=iters))
        rows.append(
            {
                "library": library,
                "case": f"{n:.0e}x{d}x{k}",
                "data_MiB": n * d * 8 / 2**20,
                "baseline_MiB": baseline,
                "peak_MiB": peak,
                "fit_MiB": peak - baseline,
            }
        )
    return rows


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10, help="EM iterations per timed fit")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-restarts", action="store_true")
    parser.add_argument("--covariance-types", default="full,diag")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument(
        "--cases",
        help="N x D x K cases to run instead of the defaults, e.g. 100000x16x16,20000x64x32",
    )
    args = parser.parse_args()

    cases = QUICK_CASES if args.quick else FULL_CASES
    if args.cases:
        cases = [tuple(int(v) for v in case.split("x")) for case in args.cases.split(",")]
    iters = 3 if args.quick else args.iters
    dtypes = args.dtypes.split(",")
    peaks = {dt: matmul_peak_gflops(dt, 1024 if args.quick else 2048) for dt in dtypes}
    print("matmul peak GFLOP/s:", {k: round(v, 1) for k, v in peaks.items()}, flush=True)

    rows = []
    columns = [
        "case",
        "cov",
        "dtype",
        "jaxem_iter_ms",
        "sklearn_iter_ms",
        "speedup",
        "compile_s",
        "jaxem_fixed_s",
        "jaxem_fit_s",
        "sklearn_fit_s",
        "GFLOP/s",
        "peak_frac",
        "loglik_diff",
    ]
    for n, d, k in cases:
        for covariance_type in args.covariance_types.split(","):
            for dtype in dtypes:
                rows.append(bench_case(n, d, k, covariance_type, dtype, iters, args.repeat, peaks))
                print_table(rows[-1:], columns)
    print("\nPer-iteration EM, same start, fixed iterations:")
    print_table(rows, columns)

    restarts = []
    if not args.skip_restarts:
        n, d, k = (5_000, 4, 4) if args.quick else (20_000, 8, 8)
        restarts.append(bench_restarts(n, d, k, 32, iters, args.repeat))
        print("\n32 restarts, fit_restarts against n_init=32 (full, float64):")
        print_table(restarts, list(restarts[0]))

    memory = []
    if not args.skip_memory:
        n, d, k = (100_000, 8, 8) if args.quick else (1_000_000, 8, 8)
        memory = bench_memory(n, d, k, iters)
        print("\nPeak RSS of a fresh process (fit_MiB = peak minus imports+data baseline):")
        print_table(memory, list(memory[0]))

    path = write_json(
        "gmm_vs_sklearn" + ("_quick" if args.quick else ""),
        {
            "machine": machine_info(),
            "matmul_peak_gflops": peaks,
            "iters": iters,
            "per_iteration": rows,
            "restarts": restarts,
            "memory": memory,
            "memory_method": "ru_maxrss of a fresh subprocess minus that of the same subprocess "
            "stopped after imports and data generation",
        },
        args.out,
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
