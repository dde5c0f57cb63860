"""Hidden Markov models: jaxem against hmmlearn (its "log" and "scaling" forward-backward) and,
where it is installed, dynamax; same data and initial parameters, one run.

Cases (``--quick`` shrinks them for a laptop CPU):

1. ``many``: 100 sequences of length 1000, D = 4, K = 8, diagonal Gaussian emissions; seconds per
   EM iteration, and end to end (jaxem's first call includes compilation).
2. ``long``: one sequence of length 10^6 (sequential and parallel-scan forward-backward).
3. ``restarts``: 32 restarts as one vmapped jaxem fit against 32 hmmlearn fits one after another.

dynamax runs in another interpreter (``--dynamax-python``, e.g. a separate venv) when it is not
importable here, fed the same arrays through a temporary ``.npz``; its ``fit_em`` compiles on every
call, so its first call is what a user waits for.

Usage: ``python benchmarks/hmm.py [--quick] [--cases many,long,restarts] [--out folder]
[--dynamax-python /path/to/python]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

# Run as a script, this folder leads sys.path: common.py puts this checkout's jaxem after
# PYTHONPATH (jaxem may be uninstalled; PYTHONPATH=/other/checkout measures another one).
from common import (
    RESULTS_DIR,
    best_time,
    block,
    first_call_time,
    machine_info,
    print_table,
    write_json,
)

K, D = 8, 4


def make_problem(seed: int, num_sequences: int, length: int):
    """Data from a sticky 8-state diagonal Gaussian HMM and a perturbed starting point."""
    rng = np.random.default_rng(seed)
    trans = 0.9 * np.eye(K) + 0.1 * rng.dirichlet(np.ones(K), K)
    trans /= trans.sum(1, keepdims=True)
    means = rng.normal(size=(K, D)) * 3
    states = np.zeros((num_sequences, length), int)
    states[:, 0] = rng.integers(0, K, num_sequences)
    cdf = np.cumsum(trans, axis=1)
    u = rng.random((num_sequences, length))
    for t in range(1, length):
        states[:, t] = np.minimum((u[:, t, None] > cdf[states[:, t - 1]]).sum(-1), K - 1)
    x = means[states] + rng.normal(size=(num_sequences, length, D))
    init = {
        "startprob": np.full(K, 1.0 / K),
        "transmat": np.full((K, K), 1.0 / K),
        "means": means + rng.normal(size=(K, D)),
        "covars": np.full((K, D), 2.0),
    }
    return x.reshape(-1, D), [length] * num_sequences, init


def hmmlearn_model(init, implementation: str, n_iter: int, tol: float, seed: int = 0):
    from hmmlearn import hmm

    model = hmm.GaussianHMM(
        K,
        "diag",
        covars_prior=0.0,
        min_covar=0.0,
        init_params="" if init is not None else "stmc",
        n_iter=n_iter,
        tol=tol,
        implementation=implementation,
        random_state=seed,
    )
    if init is not None:
        model.startprob_, model.transmat_ = init["startprob"], init["transmat"]
        model.means_, model.covars_ = init["means"], init["covars"]
    return model


def jaxem_setup(init, inference: str = "sequential"):
    import jax.numpy as jnp

    import jaxem
    from jaxem.hmm import HiddenMarkovModel, HMMParams

    family = jaxem.Gaussian(K, "diag", reg_covar=0.0)
    model = HiddenMarkovModel(family, inference=inference)
    params = HMMParams(
        jnp.asarray(init["startprob"]),
        jnp.asarray(init["transmat"]),
        family.params_from_covariances(jnp.asarray(init["means"]), jnp.asarray(init["covars"])),
    )
    return jaxem.em(model), params


def prepared_sequences(x, lengths):
    """The padded sequences as jaxem's drivers convert and check them, so that the timed fits
    start from arrays already on the device (their own checks then copy nothing)."""
    from jaxem.hmm import pad_sequences

    try:
        from jaxem.core.inputs import prepare_data
    except ImportError:  # a jaxem from before jaxem/core/inputs.py, for before/after runs
        from jaxem.core.engine import prepare_data
    data, _ = prepare_data(pad_sequences(x, lengths))
    return data


def total_log_likelihood(model, params, data) -> float:
    """The log-likelihood of all the sequences at ``params`` (hmmlearn's ``score``)."""
    import jax.numpy as jnp

    return float(jnp.sum(model.smooth(params, data).log_likelihood))


def time_jaxem(x, lengths, init, iters, *, inference="sequential", tol=0.0, repeat=3):
    import jaxem

    algo, params = jaxem_setup(init, inference)
    data = prepared_sequences(x, lengths)
    # jaxem's tol applies to the log-likelihood per sequence (the mean over the rows, which are
    # the sequences); hmmlearn's to the total.
    tol = tol / len(lengths)

    def run():
        return block(jaxem.fit(algo, params, data, max_iter=iters, tol=tol))

    first = first_call_time(run)
    warm = best_time(run, repeat=repeat)
    result = run()
    log_likelihood = total_log_likelihood(algo.model, result.params, data)
    return first, warm.best, int(result.num_iters), log_likelihood


def time_hmmlearn(x, lengths, init, iters, implementation, *, tol=-np.inf):
    """Seconds of one hmmlearn fit (too slow to repeat), its iterations and final score."""
    model = hmmlearn_model(init, implementation, iters, tol)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, lengths)
    seconds = time.perf_counter() - start
    return seconds, model.monitor_.iter, model.score(x, lengths)


# ---- dynamax, possibly in another interpreter ---------------------------------------------------


def dynamax_worker(path: str) -> None:
    """Fit with dynamax from the arrays in ``path`` and print a JSON line of timings."""
    import jax
    import jax.numpy as jnp
    from dynamax.hidden_markov_model import DiagonalGaussianHMM

    jax.config.update("jax_enable_x64", True)
    arrays = np.load(path)
    emissions = jnp.asarray(arrays["x"])
    iters = int(arrays["iters"])
    hmm = DiagonalGaussianHMM(K, D)
    params, props = hmm.initialize(
        jax.random.key(0),
        initial_probs=jnp.asarray(arrays["startprob"]),
        transition_matrix=jnp.asarray(arrays["transmat"]),
        emission_means=jnp.asarray(arrays["means"]),
        emission_scale_diags=jnp.sqrt(jnp.asarray(arrays["covars"])),
    )

    def run():
        fitted, lls = hmm.fit_em(params, props, emissions, num_iters=iters, verbose=False)
        return block((fitted, lls))

    start = time.perf_counter()
    _, lls = run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    run()
    second = time.perf_counter() - start
    print(json.dumps({"first": first, "second": second, "final_ll": float(lls[-1])}))


def time_dynamax(x, lengths, init, iters, python: str | None):
    if len(set(lengths)) != 1:
        return None  # dynamax takes equal-length sequences only
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "problem.npz")
        np.savez(path, x=x.reshape(len(lengths), lengths[0], D), iters=iters, **init)
        interpreter = python or sys.executable
        try:
            out = subprocess.run(
                [interpreter, __file__, "--dynamax-worker", path],
                capture_output=True,
                text=True,
                timeout=1800,
                check=True,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
            stderr = getattr(err, "stderr", "") or ""
            print(f"dynamax not run: {stderr.strip().splitlines()[-1:] or err}")
            return None
        return json.loads(out.stdout.strip().splitlines()[-1])


# ---- cases ---------------------------------------------------------------------------------------


def case_many(args, rows):
    x, lengths, init = make_problem(0, args.sequences, args.length)
    iters = args.iters
    first, warm, _, _ = time_jaxem(x, lengths, init, iters)
    _, scaled, _, _ = time_jaxem(x, lengths, init, iters, inference="scaled")
    log_s, _, _ = time_hmmlearn(x, lengths, init, iters, "log")
    scaling_s, _, _ = time_hmmlearn(x, lengths, init, iters, "scaling")
    row = {
        "case": f"many {args.sequences}x{args.length}",
        "jaxem_iter_s": warm / iters,
        "jaxem_scaled_iter_s": scaled / iters,
        "hmmlearn_log_iter_s": log_s / iters,
        "hmmlearn_scaling_iter_s": scaling_s / iters,
        "speedup_vs_log": log_s / warm,
        "speedup_vs_scaling": scaling_s / warm,
        "speedup_scaled_vs_scaling": scaling_s / scaled,
    }
    dyn = time_dynamax(x, lengths, init, iters, args.dynamax_python)
    if dyn is not None:
        row["dynamax_iter_s"] = dyn["second"] / iters
        row["dynamax_first_call_s"] = dyn["first"]
        row["speedup_vs_dynamax"] = dyn["second"] / warm
    rows.append(row)

    # End to end: to convergence with hmmlearn's default tol = 1e-2 on the total log-likelihood.
    first, warm, n_jax, ll_jax = time_jaxem(x, lengths, init, 500, tol=1e-2, repeat=1)
    log_s, n_log, ll_log = time_hmmlearn(x, lengths, init, 500, "log", tol=1e-2)
    scaling_s, n_scaling, _ = time_hmmlearn(x, lengths, init, 500, "scaling", tol=1e-2)
    rows.append(
        {
            "case": f"end-to-end {args.sequences}x{args.length}",
            "jaxem_s": warm,
            "jaxem_first_call_s": first,
            "jaxem_iters": n_jax,
            "hmmlearn_log_s": log_s,
            "hmmlearn_log_iters": n_log,
            "hmmlearn_scaling_s": scaling_s,
            "hmmlearn_scaling_iters": n_scaling,
            "speedup_vs_log": log_s / warm,
            "speedup_vs_scaling": scaling_s / warm,
            "loglik_jaxem_minus_hmmlearn": ll_jax - ll_log,
        }
    )


def case_long(args, rows):
    x, lengths, init = make_problem(1, 1, args.long_length)
    iters = 2
    _, seq, _, _ = time_jaxem(x, lengths, init, iters, repeat=2)
    _, par, _, _ = time_jaxem(x, lengths, init, iters, inference="parallel", repeat=2)
    _, scaled, _, _ = time_jaxem(x, lengths, init, iters, inference="scaled", repeat=2)
    log_s, _, _ = time_hmmlearn(x, lengths, init, iters, "log")
    scaling_s, _, _ = time_hmmlearn(x, lengths, init, iters, "scaling")
    rows.append(
        {
            "case": f"long 1x{args.long_length}",
            "jaxem_sequential_iter_s": seq / iters,
            "jaxem_parallel_iter_s": par / iters,
            "jaxem_scaled_iter_s": scaled / iters,
            "hmmlearn_log_iter_s": log_s / iters,
            "hmmlearn_scaling_iter_s": scaling_s / iters,
            "speedup_best_vs_scaling": scaling_s / min(seq, par, scaled),
        }
    )


def case_restarts(args, rows):
    import jax

    import jaxem
    from jaxem.hmm import HiddenMarkovModel

    x, lengths, _ = make_problem(2, args.restart_sequences, args.length)
    iters, restarts = args.iters, args.restarts
    algo = jaxem.em(HiddenMarkovModel(jaxem.Gaussian(K, "diag", reg_covar=1e-3)))
    data = prepared_sequences(x, lengths)

    def run():
        return block(
            jaxem.fit_restarts(
                algo, jax.random.key(0), data, num_restarts=restarts, max_iter=iters, tol=0.0
            )
        )

    first = first_call_time(run)
    warm = best_time(run, repeat=2).best

    def sequential_hmmlearn():
        for seed in range(restarts):
            model = hmmlearn_model(None, "scaling", iters, -np.inf, seed)
            model.covars_prior, model.min_covar = 0.0, 1e-3
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(x, lengths)

    ref = first_call_time(sequential_hmmlearn)
    rows.append(
        {
            "case": f"{restarts} restarts {args.restart_sequences}x{args.length}, {iters} iters",
            "jaxem_s": warm,
            "jaxem_first_call_s": first,
            "hmmlearn_scaling_sequential_s": ref,
            "speedup": ref / warm,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--dynamax-python", default=None, help="interpreter with dynamax")
    parser.add_argument("--dynamax-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cases", default="many,long,restarts")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help="folder for the JSON record (default: %(default)s)",
    )
    args = parser.parse_args()
    if args.dynamax_worker:
        dynamax_worker(args.dynamax_worker)
        return

    import jax

    jax.config.update("jax_enable_x64", True)
    quick = args.quick
    args.sequences = 20 if quick else 100
    args.length = 200 if quick else 1000
    args.long_length = 100_000 if quick else 1_000_000
    args.restart_sequences = 10 if quick else 20
    args.restarts = 32
    args.iters = 10
    rows: list[dict] = []
    cases = {"many": case_many, "long": case_long, "restarts": case_restarts}
    for name in args.cases.split(","):
        cases[name](args, rows)
        print_table(rows[-1:], list(rows[-1]))
    path = write_json("hmm", {"machine": machine_info(), "quick": quick, "rows": rows}, args.out)
    print(f"wrote {Path(path)}")


if __name__ == "__main__":
    main()
