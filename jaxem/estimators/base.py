"""What every jaxem estimator shares: settings, input checks, restarts, warnings, persistence.

The mixture estimators (:mod:`jaxem.estimators.mixture`) and the HMM estimators
(:mod:`jaxem.estimators.hmm`) derive from :class:`EMEstimator`, which runs every fit through
:func:`jaxem.fit_restarts` (all restarts as one vmapped computation) and writes the attributes the
two share. A subclass describes its model: how to build it from the settings, how to start it, and
which attributes its parameters become.

scikit-learn is optional: when it is importable the estimators derive from its ``BaseEstimator``
(so ``clone``, pipelines and grid searches work), check feature names with its ``validate_data``,
and raise its ``ConvergenceWarning`` and ``NotFittedError`` classes; without it they keep the same
interface.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, NamedTuple

import numpy as np

from jaxem import validation
from jaxem.core.algorithm import EM
from jaxem.core.inputs import ConvergenceWarning
from jaxem.core.kernel import Status
from jaxem.drivers.fit import FinalStats, FitResult, fit_restarts

try:
    from sklearn.base import BaseEstimator, DensityMixin
    from sklearn.exceptions import ConvergenceWarning as _SklearnConvergenceWarning
    from sklearn.exceptions import NotFittedError

    class EstimatorConvergenceWarning(ConvergenceWarning, _SklearnConvergenceWarning):
        """Caught both as ``jaxem.ConvergenceWarning`` and as scikit-learn's."""

    ESTIMATOR_BASES: tuple[type, ...] = (BaseEstimator,)
    DENSITY_BASES: tuple[type, ...] = (DensityMixin,)

except ImportError:  # scikit-learn is optional

    class NotFittedError(ValueError, AttributeError):  # type: ignore[no-redef]
        """An estimator was used before ``fit``."""

    EstimatorConvergenceWarning = ConvergenceWarning  # type: ignore[misc]

    class ParamsBase:
        """``get_params`` / ``set_params`` from the constructor's signature, as scikit-learn's."""

        @classmethod
        def _get_param_names(cls) -> list[str]:
            signature = inspect.signature(cls.__init__)
            return sorted(name for name in signature.parameters if name != "self")

        def get_params(self, deep: bool = True) -> dict[str, Any]:
            del deep
            return {name: getattr(self, name) for name in self._get_param_names()}

        def set_params(self, **params: Any) -> Any:
            valid = self._get_param_names()
            for name, value in params.items():
                if name not in valid:
                    raise ValueError(f"Invalid parameter {name!r} for {type(self).__name__}.")
                setattr(self, name, value)
            return self

        def __repr__(self) -> str:
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
            return f"{type(self).__name__}({args})"

    ESTIMATOR_BASES = (ParamsBase,)
    DENSITY_BASES = ()

try:
    from sklearn.utils.validation import validate_data
except ImportError:  # scikit-learn older than 1.6, or absent
    validate_data = None


class FitSettings(NamedTuple):
    """The checked settings every fit reads."""

    num_restarts: int
    max_iter: int
    tol: float
    chunk_size: int | None
    progress_interval: int
    seed: int | None


def feature_names(X: Any) -> np.ndarray | None:
    """The column names of a data frame when they are all strings (scikit-learn's rule)."""
    columns = getattr(X, "columns", None)
    if columns is None:
        return None
    names = np.asarray(columns, dtype=object)
    return names if all(isinstance(name, str) for name in names) else None


class EMEstimator(*ESTIMATOR_BASES):
    """The shared part of jaxem's estimators; see the module docstring.

    A subclass sets ``max_iter_name`` (scikit-learn's ``max_iter`` or hmmlearn's ``n_iter``) and
    ``nonfinite_message`` (the remedy when every restart went non-finite).
    """

    max_iter_name = "max_iter"
    nonfinite_message = "Fitting failed: the log-likelihood became NaN or infinite."

    # ---- settings

    def progress_interval(self) -> int:
        """Iterations between progress lines: ``verbose_interval`` when ``verbose`` is on, else
        none (``verbose`` is a switch or level, as in scikit-learn and hmmlearn)."""
        verbose = self.verbose
        if not isinstance(verbose, (bool, np.bool_)):
            verbose = validation.check_int("verbose", verbose, 0)
        interval = validation.check_int("verbose_interval", getattr(self, "verbose_interval", 1), 1)
        return interval if verbose else 0

    def is_warm(self) -> bool:
        """Whether this fit continues the previous one (``warm_start`` and fitted)."""
        warm = validation.check_bool("warm_start", getattr(self, "warm_start", False))
        return warm and hasattr(self, "params_")

    def fit_settings(self) -> FitSettings:
        """The common settings, checked before any work; a warm start runs one restart."""
        max_iter = validation.check_int(self.max_iter_name, getattr(self, self.max_iter_name), 0)
        num_restarts = validation.check_int("n_init", self.n_init, 1)
        tol = validation.check_real("tol", self.tol, 0.0)
        chunk_size = validation.check_optional_int("chunk_size", self.chunk_size, 1)
        interval = self.progress_interval()
        warm = self.is_warm()
        seed = None if warm else validation.check_random_state(self.random_state)
        return FitSettings(1 if warm else num_restarts, max_iter, tol, chunk_size, interval, seed)

    # ---- input

    def check_input(self, X: Any, *, reset: bool, allow_missing: bool = False) -> np.ndarray:
        """``X`` as a checked 2-D array; see :meth:`check_features`."""
        array = validation.check_data(X, allow_missing=allow_missing)
        self.check_features(X, array, reset=reset)
        return array

    def check_features(self, X: Any, array: np.ndarray, *, reset: bool) -> None:
        """``fit`` (``reset``) records ``n_features_in_`` and ``feature_names_in_`` of ``X``
        (checked as ``array``); later calls check that they match."""
        if not reset:
            self.check_fitted()
            validation.check_num_features(array, self.n_features_in_, type(self).__name__)
        if validate_data is not None:
            validate_data(self, X, reset=reset, skip_check_array=True)
            return
        if reset:
            self.n_features_in_ = array.shape[1]
            names = feature_names(X)
            if names is not None:
                self.feature_names_in_ = names
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_

    # ---- fitting

    def run_restarts(
        self,
        algo: EM,
        starts: Any,
        data: Any,
        row_weights: Any,
        settings: FitSettings,
        row_tol: float | None = None,
    ) -> tuple[FitResult, FitResult, FinalStats]:
        """All restarts as one vmapped fit; the best lane, all of them, and the statistics at the
        best lane's parameters (from the pass that gives its final log-likelihood).

        ``row_tol`` is the threshold on the mean log-likelihood per row that the fit compares,
        where the estimator's ``tol`` means something else (hmmlearn's is on the total).

        Raises the estimator's ``nonfinite_message`` when no restart stayed finite, and warns
        (:class:`EstimatorConvergenceWarning`) when the best did not converge.
        """
        best, lanes, final = fit_restarts(
            algo,
            starts,
            data,
            row_weights,
            max_iter=settings.max_iter,
            tol=settings.tol if row_tol is None else row_tol,
            verbose=settings.progress_interval,
            final_stats=True,
        )
        status = int(best.status)
        if status == Status.NONFINITE:
            raise ValueError(self.nonfinite_message)
        self.n_iter_ = int(best.num_iters)
        self.converged_ = status == Status.CONVERGED
        # Lanes beyond num_restarts (a bucket's copies of lane 0) are not restarts of their own.
        self.restart_n_iters_ = np.asarray(lanes.num_iters)[: settings.num_restarts]
        self.restart_statuses_ = np.asarray(lanes.status)[: settings.num_restarts]
        if status == Status.MAX_ITER and settings.max_iter > 0:
            warnings.warn(
                f"{type(self).__name__}: the best of {settings.num_restarts} restart(s) did not "
                f"converge within {self.max_iter_name}={settings.max_iter} iterations "
                f"(tol={settings.tol:g}): increase {self.max_iter_name} or tol, try other initial "
                "parameters, or check the data for degenerate features.",
                EstimatorConvergenceWarning,
                stacklevel=3,
            )
        return best, lanes, final

    # ---- fitted state

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "params_")

    def check_fitted(self) -> None:
        """Raise :class:`NotFittedError` unless ``fit`` has run."""
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet: call 'fit' with "
                "appropriate arguments before using this estimator."
            )

    # ---- persistence

    def save(self, path: Any) -> None:
        """Write the estimator (settings, parameters and fitted attributes) to ``path``; see
        :mod:`jaxem.io`.

        Example:
            >>> import numpy as np, jaxem, tempfile, os
            >>> x = np.random.default_rng(0).normal(size=(100, 2))
            >>> gm = jaxem.GaussianMixture(2, random_state=0).fit(x)
            >>> path = os.path.join(tempfile.mkdtemp(), "gm.npz")
            >>> gm.save(path)
            >>> loaded = jaxem.GaussianMixture.load(path)
            >>> bool((loaded.predict_proba(x) == gm.predict_proba(x)).all())
            True
        """
        from jaxem import io

        io.save(path, self)

    @classmethod
    def load(cls, path: Any) -> Any:
        """Read an estimator written by :meth:`save`; the file must hold an instance of ``cls``."""
        from jaxem import io

        return io.load_estimator(path, cls)


__all__ = [
    "DENSITY_BASES",
    "ESTIMATOR_BASES",
    "EMEstimator",
    "EstimatorConvergenceWarning",
    "FitSettings",
    "NotFittedError",
    "feature_names",
]
