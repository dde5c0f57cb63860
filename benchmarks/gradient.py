"""Per-iteration cost of the gradient M-step against the closed form on the same Gaussian mixture.

Both run from the same initial parameters on the same data in this process; the gradient path fits
the family with its closed form hidden (``jaxem.testing.gradient_only``), so every block is found by
L-BFGS (or Adam) on Q evaluated chunk by chunk. Prints seconds per EM iteration and the ratio, and
writes benchmarks/results/gradient.json.

dynamax is not compared: its gradient M-step (``fit_sgd``) exists only for its HMM and state-space
models, not for a plain mixture, and it needs tensorflow-probability.

    python benchmarks/gradient.py [--quick] [--repeat 3] [--out folder]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# Run as a script, this folder leads sys.path; common.py puts this checkout's jaxem after
# PYTHONPATH (so PYTHONPATH=/other/checkout measures another one).
from common import base_parser, best_time, block, machine_info, print_table, write_json

import jaxem
from jaxem.testing import gradient_only


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10, help="EM iterations per timed fit")
    args = parser.parse_args()
    n, d, k = (5_000, 3, 3) if args.quick else (50_000, 5, 4)
    x = jax.random.normal(jax.random.key(0), (n, d), jax.numpy.float32)
    x = x + 4.0 * jax.random.randint(jax.random.key(1), (n, 1), 0, k).astype(x.dtype)
    family = jaxem.Gaussian(k, "full")
    start = jaxem.Mixture(family).init(jax.random.key(2), x, None)
    gradient_model = jaxem.Mixture(gradient_only(family))
    cases = {
        "closed form": jaxem.em(jaxem.Mixture(family)),
        "gradient L-BFGS x5": jaxem.em(gradient_model, jaxem.Gradient(num_steps=5, tol=0.0)),
        "gradient L-BFGS x20": jaxem.em(gradient_model, jaxem.Gradient(num_steps=20, tol=0.0)),
        "gradient Adam x20": jaxem.em(
            gradient_model,
            jaxem.Gradient(optimizer=jaxem.Optimizer(optax.adam, 0.05), num_steps=20, tol=0.0),
        ),
    }
    rows = []
    base = None
    for name, algo in cases.items():

        def run(algo=algo):
            return block(jaxem.fit(algo, start, x, max_iter=args.iters, tol=0.0))

        run()  # compile
        timing = best_time(run, repeat=args.repeat)
        per_iter = timing.best / args.iters
        base = per_iter if base is None else base
        result = run()
        # Per row, recomputed from the parameters: the same figure whichever jaxem runs.
        log_joint = algo.model.log_joint(result.params, x)
        mean_log_likelihood = float(jnp.mean(jax.nn.logsumexp(log_joint, axis=1)))
        rows.append(
            {
                "M-step": name,
                "s/iter": per_iter,
                "x closed form": per_iter / base,
                "mean log-likelihood": mean_log_likelihood,
            }
        )
    print(f"N={n} D={d} K={k} float32, {args.iters} EM iterations per fit")
    print_table(rows, ["M-step", "s/iter", "x closed form", "mean log-likelihood"])
    path = write_json(
        "gradient",
        {"n": n, "d": d, "k": k, "iters": args.iters, "rows": rows, "machine": machine_info()},
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
