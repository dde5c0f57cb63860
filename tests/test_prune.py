"""Restart pruning: survivors equal their unpruned lanes, the dropped ones are reported, the best
surviving lane is returned."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem.core.prune import fit_restarts_pruned


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    x = jnp.asarray(centres[rng.integers(0, 4, 400)] + rng.normal(size=(400, 2)))
    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(4, init_method="random_rows")), chunk_size=128)
    _, unpruned = jaxem.fit_restarts(
        algo, jax.random.key(0), x, num_restarts=8, max_iter=40, tol=1e-5
    )
    return x, algo, unpruned


@pytest.mark.timeout(180)
def test_survivors_equal_unpruned_and_dropped_are_reported(problem, capsys):
    x, algo, unpruned = problem
    best, lanes = fit_restarts_pruned(
        algo,
        jax.random.key(0),
        x,
        num_restarts=8,
        max_iter=40,
        tol=1e-5,
        prune_every=3,
        verbose=True,
    )
    status = np.asarray(lanes.status)
    dropped = np.flatnonzero(status == jaxem.Status.PRUNED)
    survivors = np.flatnonzero(status != jaxem.Status.PRUNED)
    assert dropped.size > 0 and survivors.size >= 1
    assert "dropped restarts" in capsys.readouterr().out
    # A surviving lane's result is the one it has without pruning.
    for name in ("log_likelihood", "num_iters", "status", "history"):
        np.testing.assert_allclose(
            np.asarray(getattr(lanes, name))[survivors],
            np.asarray(getattr(unpruned, name))[survivors],
            atol=1e-10,
        )
    np.testing.assert_allclose(
        lanes.params.components.means[survivors],
        unpruned.params.components.means[survivors],
        atol=1e-10,
    )
    # A dropped lane stopped early, at a cut, with the history it had then.
    assert np.all(np.asarray(lanes.num_iters)[dropped] % 3 == 0)
    assert np.all(np.asarray(lanes.num_iters)[dropped] < np.asarray(unpruned.num_iters)[dropped])
    # The best surviving lane is returned.
    expected = survivors[np.argmax(np.asarray(lanes.log_likelihood)[survivors])]
    assert float(best.log_likelihood) == float(lanes.log_likelihood[expected])
    assert float(best.log_likelihood) <= float(jnp.max(unpruned.log_likelihood)) + 1e-12


@pytest.mark.timeout(120)
def test_min_restarts_and_keep_everything_without_cuts(problem):
    x, algo, unpruned = problem
    _, lanes = fit_restarts_pruned(
        algo, jax.random.key(0), x, num_restarts=8, max_iter=40, tol=1e-5, prune_every=40
    )
    # One round reaches max_iter: no cut happens, so nothing is dropped.
    assert not np.any(np.asarray(lanes.status) == jaxem.Status.PRUNED)
    np.testing.assert_allclose(lanes.log_likelihood, unpruned.log_likelihood, atol=1e-10)
    _, lanes = fit_restarts_pruned(
        algo,
        jax.random.key(0),
        x,
        num_restarts=8,
        max_iter=40,
        tol=0.0,
        prune_every=2,
        keep_fraction=0.25,
        min_restarts=3,
    )
    assert np.sum(np.asarray(lanes.status) != jaxem.Status.PRUNED) >= 3


@pytest.mark.timeout(60)
def test_errors(problem):
    x, algo, _ = problem
    with pytest.raises(ValueError, match="prune_every must be a positive integer"):
        fit_restarts_pruned(algo, jax.random.key(0), x, num_restarts=2, prune_every=0)
    with pytest.raises(ValueError, match=r"keep_fraction must be in \(0, 1\)"):
        fit_restarts_pruned(algo, jax.random.key(0), x, num_restarts=2, keep_fraction=1.0)
    with pytest.raises(ValueError, match="num_restarts must be a positive integer"):
        fit_restarts_pruned(algo, jax.random.key(0), x)
