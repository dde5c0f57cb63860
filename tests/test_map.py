"""MAP-EM: conjugate Gaussian priors, Dirichlet weights, any log prior on the gradient path."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxem
from jaxem.core import constraints as cons
from jaxem.core.mstep import expected_objective
from jaxem.models.gaussian_prior import GaussianPrior, default_prior
from jaxem.testing import gradient_only

pytestmark = pytest.mark.timeout(120)

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]


@pytest.fixture(scope="module")
def blobs():
    k1, k2 = jax.random.split(jax.random.key(0))
    return jnp.concatenate(
        [
            jax.random.normal(k1, (50, 2)),
            jnp.array([3.0, 1.0]) + 0.5 * jax.random.normal(k2, (30, 2)),
        ]
    )


@pytest.fixture(scope="module")
def faithful():
    path = Path(jaxem.__file__).parent / "datasets" / "old_faithful.csv"
    return jnp.asarray(np.loadtxt(path, delimiter=",", skiprows=1))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_map_m_step_is_a_stationary_point_of_the_log_posterior(blobs, covariance_type):
    # The closed form must maximise Q + log prior exactly: the gradient vanishes there.
    family = jaxem.Gaussian(3, covariance_type, prior=default_prior(blobs, 3, covariance_type))
    model = jaxem.Mixture(family, weight_concentration=2.0)
    algo = jaxem.em(model)
    old = model.init(jax.random.key(1), blobs, None)
    new, _ = algo.step(old, blobs, None)
    tree = model.constraints()

    rows = algo.rows(blobs)

    def objective(u):
        return expected_objective(model, cons.constrain(tree, u), old, rows)

    u_new = cons.unconstrain(tree, new)
    grad = jax.grad(objective)(u_new)
    # Weights: only the gradient along the simplex counts (softmax logits sum freely).
    grads = [*jax.tree.leaves(grad.components), grad.weights - jnp.mean(grad.weights)]
    for g in grads:
        np.testing.assert_allclose(g, 0.0, atol=1e-9)
    # ... and it is a maximum: a small random move lowers the objective.
    nudge = jax.tree.map(
        lambda a: a + 1e-3 * jnp.sign(jnp.sin(jnp.arange(a.size))).reshape(a.shape), u_new
    )
    assert float(objective(nudge)) < float(objective(u_new))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_posterior_never_decreases_over_twenty_seeds(blobs, covariance_type):
    prior = default_prior(blobs, 4, covariance_type)
    model = jaxem.Mixture(jaxem.Gaussian(4, covariance_type, prior=prior), weight_concentration=1.5)
    _, lanes = jaxem.fit_restarts(
        jaxem.em(model), jax.random.key(2), blobs, num_restarts=20, max_iter=40, tol=0.0
    )
    h = np.asarray(lanes.history)
    assert np.all(np.diff(h, axis=1) >= -1e-12 * np.abs(h[:, 1:]))
    # The history is the log-posterior (a total): log-likelihood plus log prior.
    lane = jax.tree.map(lambda a: a[0], lanes)
    plain = jaxem.em(
        dataclasses.replace(
            model,
            weight_concentration=1.0,
            components=dataclasses.replace(model.components, prior=None),
        )
    )
    loglik = plain.log_likelihood(lane.params, blobs, None)
    expected = loglik + model.log_prior(lane.params)
    np.testing.assert_allclose(lane.log_likelihood, expected, rtol=1e-12)


def test_gradient_path_with_priors_is_monotone_and_matches_closed_form(blobs):
    prior = default_prior(blobs, 2, "diag")
    family = jaxem.Gaussian(2, "diag", prior=prior)
    model = jaxem.Mixture(family, weight_concentration=3.0)
    start = model.init(jax.random.key(0), blobs, None)
    exact = jaxem.fit(jaxem.em(model), start, blobs, max_iter=500, tol=1e-12)
    autodiff = jaxem.em(
        dataclasses.replace(model, components=gradient_only(family)), jaxem.Gradient()
    )
    found = jaxem.fit(autodiff, start, blobs, max_iter=500, tol=1e-12)
    h = np.asarray(found.history)[: int(found.num_iters)]
    assert np.all(np.diff(h) >= -1e-12 * np.abs(h[1:]))
    np.testing.assert_allclose(found.log_likelihood, exact.log_likelihood, rtol=1e-6)


def test_dirichlet_weights_are_the_map_estimate():
    model = jaxem.Mixture(jaxem.Gaussian(3), weight_concentration=5.0)
    weights = model.m_step_weights(jnp.array([10.0, 0.0, 2.0]))
    np.testing.assert_allclose(weights, np.array([14.0, 4.0, 6.0]) / 24.0)


def test_default_prior_prevents_collapse_on_repeated_points(faithful):
    # Old Faithful's waiting times are integers: without a prior some restarts put a component
    # on a handful of repeated points and its covariance collapses to reg_covar.
    k = 8
    plain = jaxem.Gaussian(k, "diag", reg_covar=1e-6, init_method="random_rows")
    _, free = jaxem.fit_restarts(
        jaxem.em(jaxem.Mixture(plain)), jax.random.key(0), faithful, num_restarts=8, max_iter=200
    )
    free_variances = 1.0 / np.asarray(free.params.components.precision_cholesky) ** 2
    assert free_variances.min() < 1e-4  # a variance at the reg_covar floor
    family = dataclasses.replace(plain, prior=default_prior(faithful, k, "diag"))
    _, lanes = jaxem.fit_restarts(
        jaxem.em(jaxem.Mixture(family)), jax.random.key(0), faithful, num_restarts=8, max_iter=200
    )
    variances = 1.0 / np.asarray(lanes.params.components.precision_cholesky) ** 2
    assert np.all(np.isfinite(np.asarray(lanes.log_likelihood)))
    assert variances.min() > 1e-3


def test_prior_shape_mismatch_is_explained(blobs):
    prior = GaussianPrior(mean=(0.0, 0.0, 0.0), scale=(1.0, 1.0, 1.0), dof=5.0)
    model = jaxem.Mixture(jaxem.Gaussian(2, "diag", prior=prior))
    with pytest.raises(ValueError, match="the prior has mean of length 3"):
        jaxem.fit(jaxem.em(model), jax.random.key(0), blobs, max_iter=2)


def test_any_log_prior_on_the_gradient_path(blobs):
    # A non-conjugate prior (Laplace on the means) is part of the objective and stays monotone.
    @dataclasses.dataclass(frozen=True)
    class LaplaceMeans(jaxem.testing.GradientOnly):
        def log_prior(self, params):
            return -5.0 * jnp.sum(jnp.abs(params.means))

    model = jaxem.Mixture(LaplaceMeans(jaxem.Gaussian(2, "spherical")))
    mstep = jaxem.Gradient(optimizer=jaxem.Optimizer(optax.adam, 0.1), num_steps=5)
    result = jaxem.fit(jaxem.em(model, mstep), jax.random.key(0), blobs, max_iter=30, tol=0.0)
    h = np.asarray(result.history)
    assert np.all(np.diff(h) >= -1e-12 * np.abs(h[1:]))
    prior_term = model.log_prior(result.params)
    loglik = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2, "spherical"))).log_likelihood(
        result.params, blobs, None
    )
    np.testing.assert_allclose(result.log_likelihood, loglik + prior_term, rtol=1e-12)
