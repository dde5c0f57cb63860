"""Every feature works with every driver: the feature x driver matrix.

Each cell fits the same small problem (tests/matrix_cases.py) through one driver and compares it
with the in-memory ``jaxem.fit`` from the same starting parameters (float64, within 1e-10 of each
leaf's scale), or, for online EM (not exact EM), checks that it runs and that its sharded run
equals its one-device run. A combination that cannot be defined is refused at the call with a
ValueError that names it. The README's feature x driver table is rendered from :data:`MATRIX`
and checked against it here.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem import streaming

sys.path.insert(0, str(Path(__file__).resolve().parent))
import matrix_cases as cases
from four_devices import REPO, TESTS, run_on_four_devices

ITERS = cases.NUM_ITERS

EXACT = "equal"  # equals the in-memory fit from the same start
MONOTONE = "monotone"  # the reference itself: runs, and its objective never decreases
RUNS = "runs"  # online EM: runs, finite; sharded equals its one-device run

DRIVERS = {
    "fit": MONOTONE,
    "fit_restarts": EXACT,
    "fit_restarts_pruned": EXACT,
    "parallel.fit_sharded": EXACT,
    "parallel.fit_restarts_sharded": EXACT,
    "streaming.fit_stream": EXACT,
    "fit_stream, resumed": EXACT,
    "trace_bound": EXACT,
    "estimators": EXACT,
    "streaming.fit_online": RUNS,
    "partial_fit": RUNS,
}

# Combinations that cannot be defined, refused at the call with a ValueError saying this.
REFUSED = {
    ("gradient M-step (carried state)", "streaming.fit_online"): (
        "a gradient M-step has no statistics to average"
    ),
    ("gradient M-step (carried state)", "partial_fit"): (
        "a gradient M-step has no statistics to average"
    ),
    ("SQUAREM", "partial_fit"): "online EM is not an EM map that SQUAREM can extrapolate",
}
# Combinations that cannot even be asked for, with the reason.
ABSENT = {
    ("SQUAREM", "streaming.fit_online"): "OnlineEM has no acceleration setting",
}

MATRIX = {
    (feature, driver): REFUSED.get((feature, driver), ABSENT.get((feature, driver), kind))
    for feature in cases.FEATURES
    for driver, kind in DRIVERS.items()
}


def assert_close(actual, expected, what: str, rtol: float = 1e-10) -> None:
    """Leafwise: within ``rtol`` of the leaf's largest magnitude (integers exactly)."""
    leaves_a, tree_a = jax.tree.flatten(actual)
    leaves_e, tree_e = jax.tree.flatten(expected)
    assert tree_a == tree_e, what
    for a, e in zip(leaves_a, leaves_e, strict=True):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape, what
        if np.issubdtype(e.dtype, np.integer):
            np.testing.assert_array_equal(a, e, err_msg=what)
            continue
        finite = np.isfinite(e)
        scale = np.max(np.abs(e[finite]), initial=1.0)
        np.testing.assert_allclose(a, e, rtol=0, atol=rtol * scale, err_msg=what)


def reference(case: cases.Case) -> jaxem.FitResult:
    return jaxem.fit(case.algo, cases.start(case), case.x, case.row_weights, max_iter=ITERS, tol=0)


def assert_same_fit(result, expected, what: str) -> None:
    assert_close(result.params, expected.params, f"{what}: parameters")
    assert_close(result.log_likelihood, expected.log_likelihood, f"{what}: log-likelihood")
    assert_close(result.history, expected.history, f"{what}: history")
    assert int(result.num_iters) == int(expected.num_iters), what
    assert int(result.status) == int(expected.status), what


def lane(results, i: int):
    return jax.tree.map(lambda a: a[i], results)


# ---- the sharded cells: one worker process with 4 host devices ----------------------------------

WORKER = """
import sys
import jax
import numpy as np
sys.path.insert(0, {tests!r})
import matrix_cases as cases
import jaxem
from jaxem import parallel, streaming

assert len(jax.devices()) == 4 and jax.config.jax_enable_x64
out = {{}}
for index, feature in enumerate(cases.FEATURES):
    case = cases.case(feature)
    start = cases.start(case)
    two = cases.lanes(start, cases.second_start(case))
    fits = {{
        "fit_sharded": parallel.fit_sharded(
            case.algo, start, case.x, case.row_weights, max_iter={iters}, tol=0
        ),
        "fit_restarts_sharded": parallel.fit_restarts_sharded(
            case.algo, two, case.x, case.row_weights, max_iter={iters}, tol=0,
            mesh=parallel.data_mesh(num_restart_shards=2),
        )[1],
    }}
    if case.algo.accelerate is None and isinstance(case.algo.mstep, jaxem.ClosedForm):
        online = streaming.OnlineEM(case.algo.model, mstep=case.algo.mstep)
        fits["fit_online"] = streaming.fit_online(
            online, start, case.x, case.row_weights, key=jax.random.key(0), batch_size=40,
            num_epochs=2, chunk_size=case.algo.chunk_size, mesh=parallel.data_mesh(),
        )[0]
    for name, result in fits.items():
        for i, leaf in enumerate(jax.tree.leaves(result)):
            out[f"{{index}}|{{name}}|{{i}}"] = np.asarray(leaf)
np.savez({out!r}, **out)
"""


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("matrix")
    out = tmp / "out.npz"
    run_on_four_devices(WORKER.format(tests=str(TESTS), out=str(out), iters=ITERS), tmp)
    return dict(np.load(out))


def from_worker(saved: dict, feature: str, name: str, like):
    index = list(cases.FEATURES).index(feature)
    leaves, treedef = jax.tree.flatten(like)
    return treedef.unflatten([saved[f"{index}|{name}|{i}"] for i in range(len(leaves))])


# ---- the cells ---------------------------------------------------------------------------------


def run_cell(feature: str, driver: str, tmp_path: Path, sharded_results) -> None:
    case = cases.case(feature)
    start = cases.start(case)
    if driver == "fit":
        result = reference(case)
        history = np.asarray(result.history)
        assert np.all(np.isfinite(history)) and int(result.num_iters) == ITERS
        drops = np.diff(history)
        assert np.all(drops >= -1e-12 * np.abs(history).max()), history
    elif driver == "fit_restarts":
        _, results = jaxem.fit_restarts(
            case.algo,
            cases.lanes(start, cases.second_start(case)),
            case.x,
            case.row_weights,
            max_iter=ITERS,
            tol=0,
        )
        assert_same_fit(lane(results, 0), reference(case), driver)
    elif driver == "fit_restarts_pruned":
        # Rounds of 3 iterations: each round resumes the kernel's whole state.
        _, results = jaxem.fit_restarts_pruned(
            case.algo,
            cases.lanes(start, cases.second_start(case)),
            case.x,
            case.row_weights,
            max_iter=ITERS,
            tol=0,
            prune_every=3,
            min_restarts=2,
        )
        assert_same_fit(lane(results, 0), reference(case), driver)
    elif driver == "parallel.fit_sharded":
        expected = reference(case)
        got = from_worker(sharded_results(), feature, "fit_sharded", expected)
        assert_same_fit(got, expected, driver)
    elif driver == "parallel.fit_restarts_sharded":
        expected = reference(case)
        two = jax.tree.map(lambda a: jnp.stack([a, a]), expected)
        got = from_worker(sharded_results(), feature, "fit_restarts_sharded", two)
        assert_same_fit(lane(got, 0), expected, driver)
    elif driver == "streaming.fit_stream":
        result = streaming.fit_stream(
            cases.replace_chunk(case, 40).algo,
            start,
            cases.chunked_source(case, 23),
            max_iter=ITERS,
            tol=0,
        )
        assert_same_fit(result, reference(case), driver)
    elif driver == "fit_stream, resumed":
        algo = cases.replace_chunk(case, 40).algo
        checkpoint = tmp_path / "state.npz"
        first = streaming.fit_stream(
            algo, start, cases.chunked_source(case), max_iter=3, tol=0, checkpoint=checkpoint
        )
        assert int(first.num_iters) == 3
        resumed = streaming.fit_stream(
            algo, start, cases.chunked_source(case), max_iter=ITERS, tol=0, checkpoint=checkpoint
        )
        assert_same_fit(resumed, reference(case), driver)
    elif driver == "trace_bound":
        trace = jaxem.trace_bound(case.algo, start, case.x, case.row_weights, num_iters=ITERS)
        expected = reference(case)
        assert_close(trace.params, expected.params, f"{driver}: parameters")
        assert_close(trace.log_likelihood[-1], expected.log_likelihood, f"{driver}: final")
        if case.algo.accelerate is None:  # SQUAREM records the points it evaluated instead
            assert_close(trace.log_likelihood[:-1], expected.history, f"{driver}: history")
        # The bound is tight after each E-step, and the M-step never lowers Q.
        gap = trace.log_likelihood[:-1] - trace.expected_log_joint - trace.entropy
        assert np.all(np.abs(np.asarray(gap)) <= 1e-9 * np.abs(np.asarray(trace.entropy)).max())
        assert np.all(np.asarray(trace.gain) >= -1e-9 * np.abs(np.asarray(trace.entropy)).max())
    elif driver == "estimators":
        estimator, fit_kwargs = case.estimator()
        estimator.set_params(n_init=1, random_state=0, max_iter=ITERS, tol=0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jaxem.ConvergenceWarning)
            x = case.x[0] if isinstance(case.x, tuple) else case.x
            estimator.fit(x, **fit_kwargs)
        key = jax.random.split(jax.random.key(0), 1)[0]
        algo = jaxem.em(
            case.algo.model, case.algo.mstep, case.algo.chunk_size, case.algo.accelerate
        )
        expected = jaxem.fit(algo, key, case.x, case.row_weights, max_iter=ITERS, tol=0)
        assert_close(estimator.params_, expected.params, f"{driver}: parameters")
        assert estimator.n_iter_ == int(expected.num_iters)
    elif driver == "streaming.fit_online":
        online = streaming.OnlineEM(case.algo.model, mstep=case.algo.mstep)
        kwargs = dict(key=jax.random.key(0), batch_size=40, num_epochs=2)
        result, _ = streaming.fit_online(
            online, start, case.x, case.row_weights, chunk_size=case.algo.chunk_size, **kwargs
        )
        assert np.isfinite(float(result.log_likelihood))
        assert int(result.status) == jaxem.Status.MAX_ITER
        if feature == "frozen parameters":
            assert_close(result.params.components.means, start.components.means, "frozen means")
        got = from_worker(sharded_results(), feature, "fit_online", result)
        assert_same_fit(got, result, f"{driver} on 4 devices")
    elif driver == "partial_fit":
        estimator, fit_kwargs = case.estimator()
        estimator.set_params(random_state=0)
        x = case.x[0] if isinstance(case.x, tuple) else case.x
        for batch in np.array_split(np.arange(cases.NUM_ROWS), 4):
            kwargs = {
                k: (v[batch] if isinstance(v, np.ndarray) else v) for k, v in fit_kwargs.items()
            }
            estimator.partial_fit(x[batch], **kwargs)
        assert estimator.n_iter_ == 4
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(estimator.params_))
    else:  # pragma: no cover
        raise AssertionError(driver)


def expect_refusal(feature: str, driver: str) -> None:
    case = cases.case(feature)
    start = cases.start(case)
    reason = REFUSED[(feature, driver)]
    with pytest.raises(ValueError, match=reason):
        if driver == "streaming.fit_online":
            online = streaming.OnlineEM(case.algo.model, mstep=case.algo.mstep)
            streaming.fit_online(online, start, case.x, key=jax.random.key(0), batch_size=40)
        else:
            estimator, _ = case.estimator()
            estimator.partial_fit(case.x[0] if isinstance(case.x, tuple) else case.x)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("feature", "driver"), list(MATRIX), ids=lambda v: v)
def test_cell(feature, driver, tmp_path, request):
    if (feature, driver) in ABSENT:
        return  # nothing to call: the README says why
    if (feature, driver) in REFUSED:
        expect_refusal(feature, driver)
        return

    def sharded_results() -> dict:
        return request.getfixturevalue("sharded")

    run_cell(feature, driver, tmp_path, sharded_results)


# ---- the README's table --------------------------------------------------------------------------


def render_table() -> str:
    """The feature x driver table, as the README shows it."""
    marks = {EXACT: "=", MONOTONE: "monotone", RUNS: "runs"}
    header = "| feature | " + " | ".join(f"`{d}`" if "," not in d else d for d in DRIVERS) + " |"
    rule = "|---" * (len(DRIVERS) + 1) + "|"
    rows = [
        f"| {feature} | "
        + " | ".join(
            marks.get(MATRIX[(feature, d)], "refused" if (feature, d) in REFUSED else "n/a")
            for d in DRIVERS
        )
        + " |"
        for feature in cases.FEATURES
    ]
    return "\n".join([header, rule, *rows])


def test_readme_table_is_the_matrix():
    readme = (REPO / "README.md").read_text()
    assert render_table() in readme, "README's feature x driver table:\n" + render_table()
    for (feature, driver), reason in {**REFUSED, **ABSENT}.items():
        assert f"{feature} with `{driver}`" in readme and reason in readme, (feature, driver)
