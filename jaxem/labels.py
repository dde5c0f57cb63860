"""Partial labels (semi-supervised mixtures) for any component family.

:class:`Labelled` wraps a family so that its data is a pair ``(x, labels)``: ``labels[n]`` is the
component of row ``n``, or -1 when unknown. A labelled row's density is kept only for its own
component (the others get log density -inf), so its responsibilities are fixed to its label and its
contribution to the objective is the complete-data ``log w_y + log p_y(x)``. Unlabelled rows are
ordinary mixture rows. The objective is then the semi-supervised log-likelihood and EM still never
decreases it. Nothing in the family changes: statistics, M-step, prior and parameters are its own,
so the fitted parameters work with the plain family for prediction.

Example:
    >>> import jax, jax.numpy as jnp, jaxem
    >>> x = jnp.concatenate([jax.random.normal(jax.random.key(0), (50, 2)) - 3,
    ...                      jax.random.normal(jax.random.key(1), (50, 2)) + 3])
    >>> labels = jnp.full(100, -1).at[0].set(1).at[99].set(0)  # two rows labelled
    >>> model = jaxem.Mixture(jaxem.Labelled(jaxem.Gaussian(2)))
    >>> result = jaxem.fit(jaxem.em(model), jax.random.key(0), model.components.data(x, labels))
    >>> bool(result.params.components.means[1, 0] < 0)  # component 1 holds row 0's cluster
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxem.core.estep import normalize_log, num_rows
from jaxem.core.model import Components, ConjugateComponents, WrappedComponents
from jaxem.core.rows import default_chunk_size, reduce_chunks

Array = jax.Array


def label_log_mask(labels: Array, num_components: int, dtype: Any) -> Array:
    """``[C, K]``: 0 where a row may belong to the component, -inf where its label excludes it."""
    labels = labels.astype(jnp.int32)
    allowed = (labels[:, None] < 0) | (labels[:, None] == jnp.arange(num_components))
    return jnp.where(allowed, 0.0, -jnp.inf).astype(dtype)


def check_labels(labels: Any, num_rows_x: int, num_components: int) -> np.ndarray:
    """``labels`` as an int32 NumPy array, or a ``ValueError`` saying what is wrong with them."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.shape[0] != num_rows_x:
        raise ValueError(
            f"labels has shape {array.shape} but x has {num_rows_x} rows: pass one label per row "
            "(-1 for an unlabelled row)."
        )
    numeric = np.issubdtype(array.dtype, np.number) and np.all(np.isfinite(array))
    if not numeric or np.any(array != np.round(array)):
        raise ValueError("labels must be integers: a component index, or -1 for an unknown label.")
    if np.any(array < -1) or np.any(array >= num_components):
        raise ValueError(
            f"labels must lie in -1 .. {num_components - 1} (-1 marks an unknown label) for "
            f"{num_components} components, got values from {array.min()} to {array.max()}."
        )
    return array.astype(np.int32)


@dataclass(frozen=True)
class Labelled(WrappedComponents):
    """A component family fitted on ``(x, labels)`` with ``labels[n] = -1`` for unknown.

    Every attribute the wrapper does not define (``sample``, ``num_free_parameters``,
    ``covariances``, ...) is the wrapped family's. The first parameters are the family's
    supervised estimate from the labelled rows for every component that has labelled rows; the
    other components start from the family's own initialisation, estimated on the unlabelled rows
    it assigns to them. With no labelled row at all it is exactly the family's initialisation.

    Args:
        components: the family, e.g. ``jaxem.Bernoulli(10)``. A closed-form family keeps its closed
            form: ``Labelled(family)`` is then a :class:`LabelledConjugate`.

    Example:
        >>> import jax, jax.numpy as jnp, numpy as np, jaxem
        >>> x = jnp.concatenate([jax.random.normal(jax.random.key(0), (50, 2)) - 3,
        ...                      jax.random.normal(jax.random.key(1), (50, 2)) + 3])
        >>> labels = np.full(100, -1)
        >>> labels[[0, 99]] = [1, 0]  # two labelled rows; -1: unknown
        >>> family = jaxem.Labelled(jaxem.Gaussian(2))
        >>> result = jaxem.fit(jaxem.em(jaxem.Mixture(family)), jax.random.key(0),
        ...                    family.data(x, labels))
        >>> np.round(np.asarray(result.params.components.means[:, 0]))  # component 1 holds row 0
        array([ 3., -3.])
    """

    components: Components

    def __new__(cls, components: Any = None) -> Labelled:
        # A closed-form family keeps its closed form: Labelled(family) is then a LabelledConjugate.
        if cls is Labelled and isinstance(components, ConjugateComponents):
            cls = LabelledConjugate
        return super().__new__(cls)

    def __post_init__(self) -> None:
        if not isinstance(self.components, Components):
            raise ValueError(
                f"Labelled wraps a component family (a jaxem.Components such as "
                f"jaxem.Gaussian(3)), got {type(self.components).__name__}."
            )
        if isinstance(self.components, Labelled):
            raise ValueError("The components are already Labelled: wrap the family only once.")

    def data(self, x: Any, labels: Any) -> tuple[Any, np.ndarray]:
        """The pair ``(x, labels)`` to fit on, with the labels checked.

        Raises:
            ValueError: labels of the wrong length, not integers, or outside ``-1 .. K - 1``.
        """
        return x, check_labels(labels, num_rows(x), self.num_components)

    def log_prob_chunk(self, params: Any, data: tuple[Any, Array]) -> Array:
        x, labels = data
        log_prob = self.components.log_prob_chunk(params, x)
        return log_prob + label_log_mask(labels, self.num_components, log_prob.dtype)

    def log_prob(self, params: Any, data_one: tuple[Any, Array]) -> Array:
        return self.log_prob_chunk(params, jax.tree.map(lambda a: a[None], data_one))[0]

    def init(self, key: Array, data: tuple[Any, Array], row_weights: Array | None) -> Any:
        x, labels = data
        start = self.components.init(key, x, row_weights)
        if not isinstance(self.components, ConjugateComponents):
            return start
        k = self.num_components
        width = sum(int(np.prod(leaf.shape[1:], dtype=int)) for leaf in jax.tree.leaves(x))
        chunk_size = default_chunk_size(num_rows(x), k * max(width, 1))

        def label_counts(lc: Array, wc: Array | None, _: Array) -> Array:
            onehot = jax.nn.one_hot(lc.astype(jnp.int32), k, dtype=start_dtype)
            return jnp.sum(onehot if wc is None else onehot * wc[:, None], axis=0)

        start_dtype = jax.tree.leaves(start)[0].dtype
        has_labels = reduce_chunks(label_counts, labels, row_weights, chunk_size) > 0

        def chunk(dc: tuple[Any, Array], wc: Array | None, _: Array) -> Any:
            xc, lc = dc
            lc = lc.astype(jnp.int32)
            log_resp, _ = normalize_log(self.components.log_prob_chunk(start, xc))
            unlabelled = jnp.where(has_labels, 0, jnp.exp(log_resp))
            resp = jnp.where(
                lc[:, None] >= 0, jax.nn.one_hot(lc, k, dtype=log_resp.dtype), unlabelled
            )
            if wc is not None:
                resp = jnp.where(wc[:, None] > 0, resp * wc[:, None], 0)
            return self.components.chunk_stats(start, xc, resp)

        stats = reduce_chunks(chunk, data, row_weights, chunk_size)
        supervised = self.components.m_step(start, stats)
        any_labels = jnp.any(has_labels)
        return jax.tree.map(lambda s, u: jnp.where(any_labels, s, u), supervised, start)


@dataclass(frozen=True)
class LabelledConjugate(Labelled, ConjugateComponents):
    """:class:`Labelled` around a closed-form family: the statistics and M-step are the family's."""

    def chunk_stats(self, params: Any, data: tuple[Any, Array], resp: Array) -> Any:
        return self.components.chunk_stats(params, data[0], resp)

    def suff_stats(self, params: Any, data_one: tuple[Any, Array], resp: Array) -> Any:
        return self.components.suff_stats(params, data_one[0], resp)

    def m_step(self, params: Any, stats: Any) -> Any:
        return self.components.m_step(params, stats)
