"""Online (stepwise) EM: one full-batch update is an EM step, and mini-batches approach the batch
optimum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem import streaming


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    labels = rng.integers(0, 3, 6000)
    x = jnp.asarray(centres[labels] + rng.normal(size=(6000, 2)) * np.array([1.0, 0.5]))
    model = jaxem.Mixture(jaxem.Gaussian(3))
    params = model.init(jax.random.key(0), x, None)
    return x, model, params


@pytest.mark.timeout(120)
def test_first_update_on_all_data_is_an_em_step(problem):
    x, model, params = problem
    online = streaming.OnlineEM(model)
    state, objective = online.update(online.init(params), x)
    expected, expected_objective = jaxem.em(model).step(params, x, None)
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-10)
    np.testing.assert_allclose(objective, expected_objective, atol=1e-12)


@pytest.mark.timeout(120)
def test_step_sizes_follow_the_schedule():
    online = streaming.OnlineEM(
        jaxem.Mixture(jaxem.Gaussian(2)), step_exponent=0.7, step_offset=3.0
    )
    np.testing.assert_allclose(online.step_size(jnp.arange(4)), [1.0, 4**-0.7, 5**-0.7, 6**-0.7])


@pytest.mark.timeout(120)
def test_online_approaches_batch_optimum(problem):
    x, model, params = problem
    batch = jaxem.fit(jaxem.em(model), params, x, max_iter=500, tol=1e-10)
    assert int(batch.status) == jaxem.Status.CONVERGED
    online = streaming.OnlineEM(model)
    result, _ = streaming.fit_online(
        online, params, x, key=jax.random.key(1), batch_size=250, num_epochs=4
    )
    assert int(result.num_iters) == 1 + 4 * 24
    # The log-likelihoods are totals over the 6000 points.
    gap = float(batch.log_likelihood - result.log_likelihood) / len(x)
    # Stated tolerance: within 5e-3 nats per point of the batch optimum after four epochs.
    assert -1e-9 < gap < 5e-3
    order = np.argsort(
        np.asarray(result.params.components.means[:, 0] + 10 * result.params.components.means[:, 1])
    )
    target = np.argsort(
        np.asarray(batch.params.components.means[:, 0] + 10 * batch.params.components.means[:, 1])
    )
    np.testing.assert_allclose(
        result.params.components.means[order], batch.params.components.means[target], atol=0.05
    )
    # The one-epoch gap is larger: more data moves it toward the optimum.
    short, _ = streaming.fit_online(online, params, x, key=jax.random.key(1), batch_size=250)
    assert float(batch.log_likelihood - short.log_likelihood) / len(x) > gap * 0.5
    # Exact EM from the online parameters finishes in few iterations.
    finished = jaxem.fit(jaxem.em(model), result.params, x, max_iter=500, tol=1e-10)
    assert int(finished.num_iters) < int(batch.num_iters)


@pytest.mark.timeout(60)
def test_errors(problem):
    x, model, params = problem
    with pytest.raises(ValueError, match=r"step_exponent must be in \(0.5, 1\]"):
        streaming.OnlineEM(model, step_exponent=0.5)
    with pytest.raises(ValueError, match=r"batch_size must be an integer in \[1, 6000\]"):
        streaming.fit_online(
            streaming.OnlineEM(model), params, x, key=jax.random.key(0), batch_size=0
        )


@pytest.mark.timeout(120)
def test_partial_fit_approaches_fit(problem):
    x, _, _ = problem
    x = np.asarray(x)
    estimator = jaxem.GaussianMixture(3, random_state=0)
    for batch in np.array_split(x, 20):
        estimator.partial_fit(batch)
    assert estimator.n_iter_ == 20 and estimator.means_.shape == (3, 2)
    reference = jaxem.GaussianMixture(3, random_state=0, tol=1e-8, max_iter=500).fit(x)
    # Stated tolerance: one pass of 20 mini-batches is within 5e-3 nats per point of the fit.
    assert abs(estimator.score(x) - reference.score(x)) < 5e-3
    with pytest.raises(
        ValueError, match="X has 3 features, but GaussianMixture is expecting 2 features as input"
    ):
        estimator.partial_fit(np.ones((10, 3)))
