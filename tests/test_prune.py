"""Restart pruning: survivors equal their unpruned lanes, the dropped ones are reported, the best
surviving lane is returned.

The fits run in a fresh subprocess: XLA:CPU has crashed (a segmentation fault inside compilation)
while compiling the pruning rounds in a long-lived test worker, never in a fresh process.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem

REPO = Path(__file__).resolve().parent.parent
NUM_ROWS = 400  # rows of make_problem's data

WORKER = """
import sys
import jax
import numpy as np
import jaxem
sys.path.insert(0, {tests!r})
from test_prune import make_problem

x, algo = make_problem()
fit = dict(num_restarts=8, max_iter=40)
_, unpruned = jaxem.fit_restarts(algo, jax.random.key(0), x, tol=1e-5, **fit)
best, pruned = jaxem.fit_restarts_pruned(
    algo, jax.random.key(0), x, tol=1e-5, prune_every=3, verbose=True, **fit
)
_, uncut = jaxem.fit_restarts_pruned(algo, jax.random.key(0), x, tol=1e-5, prune_every=40, **fit)
_, kept = jaxem.fit_restarts_pruned(
    algo, jax.random.key(0), x, tol=0.0, prune_every=2, keep_fraction=0.25, min_restarts=3, **fit
)
out = {{}}
for name, lanes in [("unpruned", unpruned), ("pruned", pruned), ("uncut", uncut), ("kept", kept)]:
    for field in ("log_likelihood", "num_iters", "status", "history"):
        out[name + "_" + field] = np.asarray(getattr(lanes, field))
    out[name + "_means"] = np.asarray(lanes.params.components.means)
out["best_log_likelihood"] = np.asarray(best.log_likelihood)
np.savez({out!r}, **out)
"""


def make_problem():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    x = jnp.asarray(centres[rng.integers(0, 4, NUM_ROWS)] + rng.normal(size=(NUM_ROWS, 2)))
    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(4, init_method="random_rows")), chunk_size=128)
    return x, algo


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prune")
    script, out = tmp / "worker.py", tmp / "out.npz"
    script.write_text(WORKER.format(tests=str(REPO / "tests"), out=str(out)))
    env = dict(os.environ, JAX_ENABLE_X64="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(np.load(out)), proc.stdout


@pytest.mark.timeout(280)
def test_survivors_equal_unpruned_and_dropped_are_reported(fits):
    out, printed = fits
    status = out["pruned_status"]
    dropped = np.flatnonzero(status == jaxem.Status.PRUNED)
    survivors = np.flatnonzero(status != jaxem.Status.PRUNED)
    assert dropped.size > 0 and survivors.size >= 1
    assert "dropped restarts" in printed
    # A surviving lane's result is the one it has without pruning.
    # (log-likelihoods and histories are totals: compared as means per row)
    for name in ("log_likelihood", "num_iters", "status", "history", "means"):
        scale = NUM_ROWS if name in ("log_likelihood", "history") else 1
        np.testing.assert_allclose(
            out["pruned_" + name][survivors] / scale,
            out["unpruned_" + name][survivors] / scale,
            atol=1e-10,
        )
    # A dropped lane stopped early, at a cut, with the history it had then.
    iters = out["pruned_num_iters"]
    assert np.all(iters[dropped] % 3 == 0)
    assert np.all(iters[dropped] < out["unpruned_num_iters"][dropped])
    # The best surviving lane is returned.
    expected = survivors[np.argmax(out["pruned_log_likelihood"][survivors])]
    assert float(out["best_log_likelihood"]) == float(out["pruned_log_likelihood"][expected])
    best_mean = float(out["best_log_likelihood"]) / NUM_ROWS
    assert best_mean <= float(np.max(out["unpruned_log_likelihood"])) / NUM_ROWS + 1e-12


@pytest.mark.timeout(280)
def test_min_restarts_and_keep_everything_without_cuts(fits):
    out, _ = fits
    # One round reaches max_iter: no cut happens, so nothing is dropped.
    assert not np.any(out["uncut_status"] == jaxem.Status.PRUNED)
    np.testing.assert_allclose(
        out["uncut_log_likelihood"] / NUM_ROWS,
        out["unpruned_log_likelihood"] / NUM_ROWS,
        atol=1e-10,
    )
    assert np.sum(out["kept_status"] != jaxem.Status.PRUNED) >= 3


@pytest.mark.timeout(60)
def test_errors():
    x, algo = make_problem()
    with pytest.raises(ValueError, match="prune_every must be a positive integer"):
        jaxem.fit_restarts_pruned(algo, jax.random.key(0), x, num_restarts=2, prune_every=0)
    with pytest.raises(ValueError, match=r"keep_fraction must be in \(0, 1\)"):
        jaxem.fit_restarts_pruned(algo, jax.random.key(0), x, num_restarts=2, keep_fraction=1.0)
    with pytest.raises(ValueError, match="num_restarts must be a positive integer"):
        jaxem.fit_restarts_pruned(algo, jax.random.key(0), x)
