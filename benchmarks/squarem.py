"""E-steps and wall time to the same tolerance: plain EM against SQUAREM, from the same start.

Cases: Gaussian mixtures with well and poorly separated clusters (one fit, and 8 restarts as one
vmapped computation), and the other closed-form families on overlapping clusters. Both methods stop
on the same rule (an EM step changed the mean log-likelihood by less than ``tol``) and run in this
process on the same data in float64; prints E-steps, seconds, both final log-likelihoods and the
ratios (the log-likelihoods as means per row), and writes benchmarks/results/squarem.json.

    python benchmarks/squarem.py [--quick] [--repeat 3] [--tol 1e-8]
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# Run as a script, this folder leads sys.path; common.py puts this checkout's jaxem after
# PYTHONPATH (so PYTHONPATH=/other/checkout measures another one).
from common import base_parser, best_time, block, machine_info, print_table, write_json  # noqa: E402

import jaxem  # noqa: E402

MAX_ITER = 20_000


def gaussian_clusters(n: int, separation: float, seed: int = 0) -> np.ndarray:
    """Three 2-D clusters, centres ``separation`` standard deviations apart, unequal shapes."""
    rng = np.random.default_rng(seed)
    centres = separation * np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 0.9]])
    scales = np.array([[1.0, 1.0], [1.5, 0.7], [0.8, 1.3]])
    parts = [rng.normal(c, s, (n // 3, 2)) for c, s in zip(centres, scales, strict=True)]
    return np.concatenate(parts)


def poisson_counts(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rates = np.array([[3.0, 5.0], [4.0, 6.5]])
    return np.concatenate([rng.poisson(r, (n // 2, 2)) for r in rates]).astype(np.float64)


def bernoulli_bits(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    probs = np.array([[0.3, 0.5, 0.6, 0.4, 0.5], [0.45, 0.6, 0.5, 0.5, 0.35]])
    return np.concatenate([rng.random((n // 2, 5)) < p for p in probs]).astype(np.float64)


def cases(n: int) -> list[tuple[str, object, np.ndarray, int]]:
    """(name, family, data, restarts)."""
    return [
        ("gaussian well separated", jaxem.Gaussian(3), gaussian_clusters(n, 8.0), 1),
        ("gaussian poorly separated", jaxem.Gaussian(3), gaussian_clusters(n, 1.5), 1),
        ("gaussian poorly separated x8", jaxem.Gaussian(3), gaussian_clusters(n, 1.5), 8),
        ("gaussian diag poorly separated", jaxem.Gaussian(3, "diag"), gaussian_clusters(n, 1.5), 1),
        ("poisson overlapping", jaxem.Poisson(2), poisson_counts(n), 1),
        ("bernoulli overlapping", jaxem.Bernoulli(2), bernoulli_bits(n), 1),
    ]


def run_case(family, x, restarts: int, accelerate, tol: float, repeat: int) -> dict:
    model = jaxem.Mixture(family)
    algo = jaxem.em(model, accelerate=accelerate)
    x = jnp.asarray(x)
    if restarts == 1:
        start = jax.jit(model.init)(jax.random.key(0), x, None)

        def run():
            return block(jaxem.fit(algo, start, x, max_iter=MAX_ITER, tol=tol))

    else:
        keys = jax.random.split(jax.random.key(0), restarts)
        start = jax.jit(jax.vmap(model.init, in_axes=(0, None, None)))(keys, x, None)

        def run():
            return block(jaxem.fit_restarts(algo, start, x, max_iter=MAX_ITER, tol=tol)[1])

    result = run()  # compile
    timing = best_time(run, repeat=repeat)
    # The mean log-likelihood per row, recomputed from the parameters: the same figure whichever
    # jaxem runs (the best lane's, with restarts).
    params = result.params if restarts > 1 else jax.tree.map(lambda a: a[None], result.params)
    log_joint = jax.vmap(model.log_joint, in_axes=(0, None))(params, x)
    log_likelihood = jnp.max(jnp.mean(jax.nn.logsumexp(log_joint, axis=-1), axis=-1))
    # With restarts the lanes run in lockstep, so the slowest lane sets the E-steps paid.
    return {
        "e_steps": int(jnp.max(result.num_iters)),
        "seconds": timing.best,
        "log_likelihood": float(log_likelihood),
        "converged": bool(jnp.all(result.status == jaxem.Status.CONVERGED)),
    }


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--tol", type=float, default=1e-8, help="convergence tolerance for both")
    args = parser.parse_args()
    n = 3_000 if args.quick else 30_000
    rows = []
    for name, family, x, restarts in cases(n):
        plain = run_case(family, x, restarts, None, args.tol, args.repeat)
        fast = run_case(family, x, restarts, "squarem", args.tol, args.repeat)
        rows.append(
            {
                "case": name,
                "n": len(x),
                "em_e_steps": plain["e_steps"],
                "sq_e_steps": fast["e_steps"],
                "e_step_ratio": plain["e_steps"] / fast["e_steps"],
                "em_s": plain["seconds"],
                "sq_s": fast["seconds"],
                "time_ratio": plain["seconds"] / fast["seconds"],
                "em_loglik": plain["log_likelihood"],
                "sq_loglik": fast["log_likelihood"],
                "loglik_gain": fast["log_likelihood"] - plain["log_likelihood"],
                "both_converged": plain["converged"] and fast["converged"],
            }
        )
        print_table(rows[-1:], list(rows[-1]))
    columns = ["case", "em_e_steps", "sq_e_steps", "e_step_ratio", "em_s", "sq_s", "time_ratio"]
    print()
    print_table(rows, [*columns, "loglik_gain", "both_converged"])
    path = write_json(
        "squarem",
        {"machine": machine_info(), "tol": args.tol, "max_iter": MAX_ITER, "rows": rows},
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
