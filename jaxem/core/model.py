"""The contracts between the engine and a model.

A *model* is anything the engine can run EM on: it initialises parameters, turns a chunk of data
into additive expected statistics (the E-step), and turns summed statistics into new parameters (the
M-step). :class:`Components` and :class:`ConjugateComponents` are the smaller contracts a family of
component densities implements; :class:`jaxem.core.mixture.Mixture` turns them into a model.

Parameters, statistics and data are pytrees. ``x`` is an array, or a pytree of arrays, whose leaves
share a leading data axis; ``row_weights`` is ``None`` (every row counts once) or an array of
non-negative per-row weights along that axis (never to be confused with a mixture's weights).

A model (or a component family, which :class:`~jaxem.core.mixture.Mixture` asks) may also define
``prepare_rows(x)``: work on the data alone that a fit does once, before its loop, instead of on
every chunk at every iteration. It returns a pytree with the same rows, and during the fit the
model's E-step and M-step receive chunks of it in place of chunks of ``x``.

Frozen parameters (held at their values by an M-step's ``frozen`` setting, or declared by a model
such as a hidden Markov model that re-estimates only some of its parts) are handled by one
mechanism: the M-step strategy's leaf mask. A model or family whose closed form can hold some
blocks fixed and still maximise Q exactly over the others says so with
``m_step_given(params, stats, frozen)`` (``frozen``: bools shaped like ``params``); see
:func:`conditional_m_step`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

Array = jax.Array
Params = Any
Stats = Any
Data = Any


@runtime_checkable
class Model(Protocol):
    """What the engine needs of a model (a frozen dataclass, hashed by value)."""

    def init(self, key: Array, x: Data, row_weights: Array | None) -> Params:
        """Initial parameters drawn with ``key`` from the data."""

    def e_step(self, params: Params, x: Data, row_weights: Array | None) -> tuple[Stats, Array]:
        """Expected statistics of one chunk and the weighted sum of its log-likelihoods."""

    def m_step(self, params: Params, stats: Stats) -> Params:
        """New parameters from the statistics summed over all chunks."""

    def log_prior(self, params: Params) -> Array:
        """Log prior density of the parameters (0 for maximum likelihood)."""


class Components:
    """K component densities of one family; subclass as a frozen dataclass.

    A subclass sets ``num_components`` and implements :meth:`init` and :meth:`log_prob` for one
    datum; the engine vmaps it over data. Families may override :meth:`log_prob_chunk` with a
    vectorised version when a benchmark shows it pays.
    """

    num_components: int

    def init(self, key: Array, x: Data, row_weights: Array | None) -> Params:
        """Initial component parameters drawn with ``key`` from the data."""
        raise NotImplementedError

    def log_prob(self, params: Params, x_one: Data) -> Array:
        """Log density of one datum under each component, shape ``[K]``."""
        raise NotImplementedError

    def log_prob_chunk(self, params: Params, x: Data) -> Array:
        """Log densities of a chunk, shape ``[C, K]``."""
        return jax.vmap(self.log_prob, in_axes=(None, 0))(params, x)

    def log_prior(self, params: Params) -> Array:
        """Log prior density of the component parameters (0: maximum likelihood)."""
        del params
        return jnp.zeros(())

    def prepare_rows(self, x: Data) -> Data:
        """Data-only work a fit does once, before its loop (see the module's notes): none here.
        Defined on the base class so that a wrapper family that forwards unknown attributes to the
        family it wraps does not hand on the wrapped family's prepared rows."""
        return x

    def constraints(self) -> Any:
        """Where the parameters live, for the gradient M-step: a prefix pytree of
        :mod:`jaxem.core.constraints` objects (``None``: every leaf unconstrained)."""
        return None

    def closed_form_blocks(self) -> Any:
        """A prefix pytree of bools marking the leaves :meth:`ConjugateComponents.m_step` sets
        exactly; the gradient M-step optimises the others. None here (no closed form)."""
        return False


class ConjugateComponents(Components):
    """Components with a closed-form M-step.

    :meth:`suff_stats` maps one datum and its (weighted) responsibilities to statistics that add
    over data. It receives the current parameters so that a family can accumulate about a shift
    close to the answer (the Gaussian accumulates about the previous means, which keeps float32
    accurate).
    :meth:`m_step` maps the summed statistics to the exact maximiser of Q (plus the log prior).
    """

    def suff_stats(self, params: Params, x_one: Data, resp: Array) -> Stats:
        """Statistics of one datum with responsibilities ``resp`` (shape ``[K]``)."""
        raise NotImplementedError

    def chunk_stats(self, params: Params, x: Data, resp: Array) -> Stats:
        """Statistics summed over a chunk; ``resp`` has shape ``[C, K]``."""
        per_datum = jax.vmap(self.suff_stats, in_axes=(None, 0, 0))(params, x, resp)
        return jax.tree.map(lambda s: jnp.sum(s, axis=0), per_datum)

    def m_step(self, params: Params, stats: Stats) -> Params:
        """Parameters that maximise Q (plus the log prior) given summed statistics."""
        raise NotImplementedError

    def closed_form_blocks(self) -> Any:
        """Every block by default; a family whose ``m_step`` updates only some blocks (and passes
        the others through) marks the others ``False`` so the gradient M-step optimises them."""
        return True


class WrappedComponents(Components):
    """Base of a family that wraps another (``components``) and changes how it sees the data.

    Every attribute the wrapper does not define is the wrapped family's; the parameters, the log
    prior, the constraints and the closed-form blocks are the wrapped family's too (the base class
    defines those, so they would otherwise not be forwarded). Rows prepared by the wrapped family
    are not: the wrapper's data differ.
    """

    components: Components

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the wrapper lacks; dunders stay unforwarded for copy and pickle.
        if name.startswith("__") or name == "components":
            raise AttributeError(name)
        return getattr(self.components, name)

    @property
    def num_components(self) -> int:
        return self.components.num_components

    def log_prior(self, params: Params) -> Array:
        return self.components.log_prior(params)

    def constraints(self) -> Any:
        return self.components.constraints()

    def closed_form_blocks(self) -> Any:
        return self.components.closed_form_blocks()


class NoConditionalMStep(Exception):
    """A model cannot hold these blocks fixed and still maximise Q exactly in closed form."""


def conditional_m_step(part: Any, params: Params, stats: Stats, frozen: Any) -> Params:
    """The exact maximiser of Q over the blocks of ``params`` not marked in ``frozen``.

    ``part`` is a model or a component family; ``frozen`` a pytree of Python bools shaped like
    ``params``. All free or all frozen need nothing of ``part``; otherwise it must define
    ``m_step_given(params, stats, frozen)``, or :class:`NoConditionalMStep` is raised (the caller
    then merges the unconditional M-step and checks that Q did not decrease).

    Example:
        >>> import jax.numpy as jnp, jaxem
        >>> family = jaxem.Gaussian(1, "diag")
        >>> params = jaxem.GaussianParams(jnp.zeros((1, 1)), jnp.ones((1, 1)))
        >>> stats = family.suff_stats(params, jnp.array([2.0]), jnp.array([1.0]))
        >>> frozen = jaxem.GaussianParams(True, False)
        >>> conditional_m_step(family, params, stats, frozen).means.tolist()
        [[0.0]]
    """
    flags = jax.tree.leaves(frozen)
    if all(flags):
        return params
    if not any(flags):
        return part.m_step(params, stats)
    method = getattr(part, "m_step_given", None)
    if method is None:
        raise NoConditionalMStep(type(part).__name__)
    return method(params, stats, frozen)


def count_free_parameters(family: Any, num_features: int) -> int:
    """``family.num_free_parameters(num_features)``, the count BIC, AIC and ICL need, or a
    ``ValueError`` saying that the family lacks the method.

    Example:
        >>> import jaxem
        >>> count_free_parameters(jaxem.Gaussian(2, "spherical"), 3)
        8
    """
    count = getattr(family, "num_free_parameters", None)
    if count is None:
        raise ValueError(
            f"{type(family).__name__} does not define num_free_parameters(num_features), which "
            "the information criteria need: add that method to the family."
        )
    return int(count(num_features))
