"""Initialisation: k-means++, k-means, random rows and random responsibilities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem import init as initializers
from jaxem.core import rows as row_passes

# Jitted once per module so the seed loops below compile once, not once per seed.
kmeans_plusplus = jax.jit(initializers.kmeans_plusplus, static_argnums=3)
random_rows = jax.jit(initializers.random_rows, static_argnums=3)

CENTRES = np.array([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]])


def clustered(seed: int, n: int = 400) -> np.ndarray:
    """Clusters of spread 0.1, 50 apart: a k-means++ draw lands in an already seeded cluster with
    probability about 1e-5, so a correct seeding puts one centre in each."""
    rng = np.random.default_rng(seed)
    return CENTRES[np.arange(n) % 4] + 0.1 * rng.normal(size=(n, 2))


def cluster_of(points: np.ndarray) -> np.ndarray:
    return np.argmin(((np.asarray(points)[:, None] - CENTRES[None]) ** 2).sum(-1), axis=1)


def test_kmeans_plusplus_seeds_one_centre_per_cluster():
    x = jnp.asarray(clustered(0))
    for seed in range(10):
        centres = kmeans_plusplus(jax.random.key(seed), x, None, 4)
        # Every centre is a data row, and the far-apart clusters each get one.
        assert np.all(np.any(np.all(np.asarray(centres)[:, None] == np.asarray(x)[None], -1), 1))
        assert sorted(cluster_of(centres)) == [0, 1, 2, 3]


def test_kmeans_plusplus_subsamples_large_data(monkeypatch):
    monkeypatch.setattr(initializers, "KMEANS_PLUSPLUS_MAX_ROWS", 64)
    x = jnp.asarray(clustered(1, 1000))
    centres = initializers.kmeans_plusplus(jax.random.key(0), x, None, 4)
    assert sorted(cluster_of(centres)) == [0, 1, 2, 3]


def test_kmeans_plusplus_with_fewer_distinct_points_than_centres():
    x = jnp.asarray(np.repeat([[1.0, 2.0], [3.0, 4.0]], 10, axis=0))
    centres = np.asarray(initializers.kmeans_plusplus(jax.random.key(0), x, None, 4))
    assert np.all(np.isfinite(centres))
    assert {tuple(c) for c in centres} == {(1.0, 2.0), (3.0, 4.0)}


def test_zero_weight_rows_are_never_chosen():
    x = jnp.asarray(clustered(2))
    weights = jnp.asarray(np.where(cluster_of(np.asarray(x)) == 3, 0.0, 1.0))
    for seed in range(5):
        key = jax.random.key(seed)
        seeded = kmeans_plusplus(key, x, weights, 3)
        assert sorted(cluster_of(seeded)) == [0, 1, 2]
        assert 3 not in cluster_of(random_rows(key, x, weights, 3))


@pytest.mark.parametrize("chunk_size", [None, 7, 64, 400])
def test_kmeans_finds_the_cluster_means_for_any_chunk_size(chunk_size):
    x = jnp.asarray(clustered(3))
    centres = initializers.kmeans(jax.random.key(0), x, None, 4, chunk_size=chunk_size)
    order = np.argsort(cluster_of(centres))
    expected = np.stack([np.asarray(x)[np.arange(400) % 4 == j].mean(0) for j in range(4)])
    np.testing.assert_allclose(np.asarray(centres)[order], expected, rtol=1e-12, atol=1e-12)


def test_kmeans_centres_are_weighted_means():
    x = jnp.array([[0.0], [1.0], [100.0], [101.0]])
    weights = jnp.array([3.0, 1.0, 1.0, 1.0])
    centres = initializers.kmeans(jax.random.key(0), x, weights, 2)
    np.testing.assert_allclose(np.sort(np.asarray(centres)[:, 0]), [0.25, 100.5], rtol=1e-12)


def test_random_rows_draws_distinct_rows():
    x = jnp.arange(20.0)[:, None]
    rows = np.asarray(initializers.random_rows(jax.random.key(0), x, None, 10))[:, 0]
    assert len(set(rows)) == 10 and set(rows) <= set(range(20))


def test_random_rows_draws_in_proportion_to_the_weights_without_replacement():
    # Successive sampling: the first row with probability w_i / sum w, the second from the rest.
    x = jnp.arange(4.0)[:, None]
    weights = jnp.array([1.0, 2.0, 3.0, 4.0])
    draws = jax.vmap(lambda key: random_rows(key, x, weights, 2))(
        jax.random.split(jax.random.key(5), 20_000)
    )
    first, second = np.asarray(draws[:, 0, 0], int), np.asarray(draws[:, 1, 0], int)
    assert np.all(first != second)
    p = np.asarray(weights) / 10
    np.testing.assert_allclose(np.bincount(first, minlength=4) / 20_000, p, atol=0.01)
    # P(second = j) = sum_i p_i p_j / (1 - p_i) over i != j.
    expected = np.array(
        [sum(p[i] * p[j] / (1 - p[i]) for i in range(4) if i != j) for j in range(4)]
    )
    np.testing.assert_allclose(np.bincount(second, minlength=4) / 20_000, expected, atol=0.01)


def test_random_rows_with_fewer_rows_than_centres_repeats_rows():
    x = jnp.arange(3.0)[:, None]
    rows = np.asarray(initializers.random_rows(jax.random.key(0), x, None, 5))[:, 0]
    assert rows.shape == (5,) and set(rows) <= {0.0, 1.0, 2.0}


def test_random_resp_depends_only_on_the_row_number():
    key = jax.random.key(4)
    whole = initializers.random_resp(key, jnp.arange(30), 3, jnp.float64)
    part = initializers.random_resp(key, jnp.arange(10, 17), 3, jnp.float64)
    np.testing.assert_array_equal(part, whole[10:17])
    np.testing.assert_allclose(jnp.sum(whole, axis=-1), 1.0, rtol=1e-14)
    assert np.all(np.asarray(whole) > 0)


@pytest.mark.parametrize("init_method", ["kmeans++", "kmeans", "random_resp", "random_rows"])
def test_gaussian_init_is_chunk_size_invariant(init_method, monkeypatch):
    """Gaussian.init passes over the data in default-sized chunks; shrinking the default (256-row
    chunks, a short last one) must give the same parameters. Float64 full-covariance statistics
    are expanded about each chunk's mean, with a rounding error of about eps (distance / spread)^2
    = 2e-16 (35 / 0.1)^2 = 3e-11 of the variances on these clusters, larger in relative terms for
    the small off-diagonal entries: hence 1e-8 rather than 1e-10."""
    x = jnp.asarray(clustered(5, 1000))
    weights = jnp.asarray(np.random.default_rng(5).uniform(0.5, 2.0, 1000))
    family = jaxem.Gaussian(4, init_method=init_method)
    whole = family.init(jax.random.key(0), x, weights)
    monkeypatch.setattr(row_passes, "DEFAULT_CHUNK_ELEMENTS", 64)
    monkeypatch.setattr(row_passes, "ACCELERATOR_CHUNK_ELEMENTS", 64)
    assert row_passes.default_chunk_size(1000, 8) == 256
    chunked = family.init(jax.random.key(0), x, weights)
    for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("init_method", ["kmeans++", "kmeans", "random_rows"])
def test_gaussian_init_from_centres_is_sensible(init_method):
    x = jnp.asarray(clustered(6))
    family = jaxem.Gaussian(4, init_method=init_method)
    params = family.init(jax.random.key(1), x, None)
    assert np.all(np.isfinite(np.asarray(params.precision_cholesky)))
    if init_method != "random_rows":  # random rows may put two centres in one cluster
        assert sorted(cluster_of(params.means)) == [0, 1, 2, 3]
        np.testing.assert_allclose(
            params.means[np.argsort(cluster_of(params.means))], CENTRES, atol=0.03
        )
        np.testing.assert_allclose(
            family.covariances(params), 0.01 * np.eye(2)[None].repeat(4, 0), atol=0.003
        )


def test_gaussian_init_with_integer_weights_equals_repeated_rows():
    """From the same centres (k-means), weights and repeated rows give the same first parameters."""
    rng = np.random.default_rng(7)
    x = clustered(7, 200)
    counts = rng.integers(1, 4, size=200)
    family = jaxem.Gaussian(4, init_method="kmeans")
    weighted = family.init(jax.random.key(0), jnp.asarray(x), jnp.asarray(counts, jnp.float64))
    repeated = family.init(jax.random.key(0), jnp.asarray(np.repeat(x, counts, axis=0)), None)
    order_w, order_r = (
        np.argsort(cluster_of(weighted.means)),
        np.argsort(cluster_of(repeated.means)),
    )
    np.testing.assert_allclose(weighted.means[order_w], repeated.means[order_r], rtol=1e-10)
    # 1e-8: float64 full-covariance statistics are expanded about each chunk's mean (see above).
    np.testing.assert_allclose(
        weighted.precision_cholesky[order_w], repeated.precision_cholesky[order_r], rtol=1e-8
    )


def test_random_resp_init_is_finite_and_fits():
    x = jnp.asarray(clustered(8))
    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(4, init_method="random_resp")))
    result = jaxem.fit(algo, jax.random.key(0), x, max_iter=200)
    assert int(result.status) == jaxem.Status.CONVERGED
    # The history holds totals: compared as means per row.
    mean = np.asarray(result.history)[: int(result.num_iters)] / len(x)
    assert np.all(np.diff(mean) > -1e-12)


@pytest.mark.parametrize(
    "components",
    [jaxem.Gaussian(4, init_method=method) for method in ("kmeans++", "kmeans", "random_rows")]
    + [jaxem.Poisson(4), jaxem.StudentT(4)],
    ids=lambda c: f"{type(c).__name__}-{getattr(c, 'init_method', '')}",
)
def test_init_takes_numpy_data_outside_jit(components):
    # Seeding picks rows by traced indices, which a NumPy array cannot take: it must be converted.
    x_np = np.abs(clustered(3))
    weights_np = np.linspace(0.5, 1.5, len(x_np))
    x_before, weights_before = x_np.copy(), weights_np.copy()
    model = jaxem.Mixture(components)
    from_numpy = model.init(jax.random.key(0), x_np, weights_np)
    from_jax = model.init(jax.random.key(0), jnp.asarray(x_np), jnp.asarray(weights_np))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), from_numpy, from_jax)
    np.testing.assert_array_equal(x_np, x_before)
    np.testing.assert_array_equal(weights_np, weights_before)
