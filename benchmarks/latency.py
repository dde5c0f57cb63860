"""Latency as users meet it: first calls in fresh processes, shape reuse, per-fit overhead.

Every scenario runs in a fresh Python process (``--child NAME`` of this script), against an empty
store of compiled programs (``JAXEM_CACHE_DIR`` set to a new folder: "cold") or the store the cold
run filled ("warm": a second process). Each child reports wall times and where the time went,
summed from JAX's own monitoring events (tracing, lowering to MLIR, XLA compilation), the rest
being host work and running. References (scikit-learn) run in the same process on the same data.

    python benchmarks/latency.py [--quick] [--out DIR]

Targets (issue "fast from the first call"), on the 2-core CPU with Old Faithful (272 x 2), float64:
cold first fit <= 2 s after import; new K or covariance type <= 0.5 s; predict / score_samples /
sample at a new size <= 0.1 s after their first call; first GaussianHMM fit <= 2 s; a second
process's first fit <= 0.5 s; GridSearchCV (4 K x 4 types x 3 folds) within 1.5x scikit-learn;
``jaxem fit`` over K = 1-6 x 4 types <= 5 s cold, <= 2 s warm; at (1e5, 16, 16) the estimator's
20-iteration fit from a given start >= 10x scikit-learn's, float32 faster than float64.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

from common import HERE, base_parser, machine_info, print_table, subprocess_env, write_json

EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "compile_s",
}
TYPES = ("full", "tied", "diag", "spherical")


# ---------------------------------------------------------------- children (fresh processes)


class Recorder:
    """Wall time of steps, with JAX's trace / lower / compile seconds inside each."""

    def __init__(self) -> None:
        import jax

        self.current: dict[str, float] = defaultdict(float)
        self.steps: dict[str, dict[str, float]] = {}

        def listener(event: str, duration: float, **_: object) -> None:
            name = EVENTS.get(event)
            if name is not None:
                self.current[name] += duration
                self.current["programs"] += name == "compile_s"

        jax.monitoring.register_event_duration_secs_listener(listener)

    def time(self, name: str, fn):
        self.current = defaultdict(float)
        start = time.perf_counter()
        value = fn()
        wall = time.perf_counter() - start
        self.steps[name] = {"wall_s": wall, **self.current}
        return value


def child_mixture() -> dict:
    start = time.perf_counter()
    import numpy as np

    import jaxem
    from jaxem import GaussianMixture  # the estimators import scikit-learn, when installed
    from jaxem.datasets import load_old_faithful

    import_s = time.perf_counter() - start
    rec = Recorder()
    x = load_old_faithful()
    gm = rec.time("first_fit", lambda: GaussianMixture(3, random_state=0).fit(x))
    rec.time("new_k", lambda: GaussianMixture(4, random_state=0).fit(x))
    rec.time("new_type", lambda: GaussianMixture(3, covariance_type="diag", random_state=0).fit(x))
    rec.time("new_n", lambda: GaussianMixture(3, random_state=0).fit(x[:200]))
    big = np.tile(x, (4, 1))
    for method in ("predict", "score_samples", "predict_proba"):
        rec.time(f"{method}_first", lambda m=method: getattr(gm, m)(x[:100]))
        for n in (37, 150, 272, 1000):
            rec.time(f"{method}_{n}", lambda m=method, n=n: getattr(gm, m)(big[:n]))
    rec.time("sample_first", lambda: gm.sample(10))
    for n in (1, 77, 300, 5000):
        rec.time(f"sample_{n}", lambda n=n: gm.sample(n))
    rec.time("fit_n_init_3", lambda: GaussianMixture(3, n_init=3, random_state=0).fit(x))
    rec.time("fit_max_iter_50", lambda: GaussianMixture(3, max_iter=50, random_state=0).fit(x))
    rec.time("fit_tol_1e-5", lambda: GaussianMixture(3, tol=1e-5, random_state=0).fit(x))
    del jaxem
    return {"import_s": import_s, "steps": rec.steps}


def child_hmm() -> dict:
    start = time.perf_counter()
    from jaxem import GaussianHMM
    from jaxem.datasets import load_old_faithful

    import_s = time.perf_counter() - start
    rec = Recorder()
    x = load_old_faithful()
    rec.time("first_fit", lambda: GaussianHMM(3, n_iter=50, random_state=0).fit(x))
    return {"import_s": import_s, "steps": rec.steps}


def child_grid() -> dict:
    import warnings

    from sklearn import mixture
    from sklearn.model_selection import GridSearchCV

    from jaxem import GaussianMixture
    from jaxem.datasets import load_old_faithful

    x = load_old_faithful()
    grid = {"n_components": [1, 2, 3, 4], "covariance_type": list(TYPES)}
    rec = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = rec.time(
            "sklearn",
            lambda: GridSearchCV(mixture.GaussianMixture(random_state=0), grid, cv=3).fit(x),
        )
        ours = rec.time(
            "jaxem", lambda: GridSearchCV(GaussianMixture(random_state=0), grid, cv=3).fit(x)
        )
    return {
        "steps": rec.steps,
        "best": {"sklearn": reference.best_params_, "jaxem": ours.best_params_},
    }


def child_scale(num_rows: int, num_features: int, num_components: int, repeat: int) -> dict:
    import warnings

    import jax
    import numpy as np
    from sklearn import mixture

    from jaxem import GaussianMixture

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(num_components, num_features))
    labels = rng.integers(num_components, size=num_rows)
    x = centres[labels] + rng.normal(size=(num_rows, num_features))
    # One given start for both: means at random rows, unit precisions, equal weights.
    means = x[rng.choice(num_rows, num_components, replace=False)]
    precisions = np.broadcast_to(np.eye(num_features), (num_components, num_features, num_features))
    weights = np.full(num_components, 1.0 / num_components)
    out = {}

    def settings(max_iter):
        return dict(
            n_components=num_components,
            max_iter=max_iter,
            tol=0.0,
            weights_init=weights,
            means_init=means,
            precisions_init=precisions,
        )

    def best(fn):
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for dtype in ("float64", "float32"):
            data = x.astype(dtype)
            fit20 = partial(lambda d: GaussianMixture(**settings(20)).fit(d), data)
            fit0 = partial(lambda d: GaussianMixture(**settings(0)).fit(d), data)
            fit20()
            fit0()
            jaxem_20, jaxem_0 = best(fit20), best(fit0)
            row = {"jaxem_20_s": jaxem_20, "jaxem_0_s": jaxem_0}
            row["per_iter_s"] = (jaxem_20 - jaxem_0) / 20
            row["overhead_iters"] = jaxem_0 / row["per_iter_s"]
            if dtype == "float64":
                sk = best(lambda: mixture.GaussianMixture(**settings(20)).fit(x))
                row["sklearn_20_s"] = sk
                row["speedup"] = sk / jaxem_20
            out[dtype] = row
    out["backend"] = jax.default_backend()
    return out


def run_child(name: str, cache: Path, *args: str) -> dict:
    env = subprocess_env({"JAXEM_CACHE_DIR": str(cache), "JAX_ENABLE_X64": "1"})
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", name, *args],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"child {name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")


def time_cli(cache: Path, csv: Path, out: Path) -> float:
    env = subprocess_env({"JAXEM_CACHE_DIR": str(cache), "JAX_ENABLE_X64": "1"})
    command = [
        sys.executable, "-c", "import sys; from jaxem.cli import main; sys.exit(main())",
        "fit", str(csv), "--components", "1-6", "--out", str(out),
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=HERE, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"jaxem fit failed:\n{done.stderr[-4000:]}")
    return wall


def import_time(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    done = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(), cwd=HERE, capture_output=True, text=True
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--child", help=argparse_hidden())
    parser.add_argument("--scale", default="100000,16,16", help="N,D,K of the per-fit overhead")
    args = parser.parse_args()
    if args.child:
        children = {"mixture": child_mixture, "hmm": child_hmm, "grid": child_grid}
        if args.child == "scale":
            n, d, k = (int(v) for v in args.scale.split(","))
            result = child_scale(n, d, k, repeat=2 if args.quick else 3)
        else:
            result = children[args.child]()
        print("RESULT " + json.dumps(result))
        return

    from jaxem.datasets import load_old_faithful

    record: dict = {"machine": machine_info(), "import_s": {}}
    record["import_s"]["sklearn.mixture"] = import_time("sklearn.mixture")
    record["import_s"]["jaxem"] = import_time("jaxem")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for name in ("mixture", "hmm"):
            # The warm run (a second process) reads what the cold run stored.
            record[f"{name}_cold"] = run_child(name, folder / f"{name}-cache")
            record[f"{name}_warm"] = run_child(name, folder / f"{name}-cache")
        record["grid_cold"] = run_child("grid", folder / "grid-cache")
        record["grid_warm"] = run_child("grid", folder / "grid-cache")
        csv = folder / "faithful.csv"
        x = load_old_faithful()
        csv.write_text("eruptions,waiting\n" + "\n".join(f"{a},{b}" for a, b in x))
        cli_cache = folder / "cli-cache"
        record["cli_cold_s"] = time_cli(cli_cache, csv, folder / "m1.npz")
        record["cli_warm_s"] = time_cli(cli_cache, csv, folder / "m2.npz")
        record["scale"] = run_child("scale", folder / "scale-cache", "--scale", args.scale)

    report(record)
    write_json("latency", record, args.out)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


def ratio(grid_steps: dict) -> float:
    return grid_steps["jaxem"]["wall_s"] / grid_steps["sklearn"]["wall_s"]


def report(record: dict) -> None:
    mixture_cold = record["mixture_cold"]["steps"]
    mixture_warm = record["mixture_warm"]["steps"]
    later = [
        name
        for name in mixture_cold
        if name.split("_")[0] in ("predict", "score", "sample") and not name.endswith("first")
    ]
    grid = record["grid_cold"]["steps"]
    grid_warm = record["grid_warm"]["steps"]
    scale = record["scale"]
    changed = ("fit_n_init_3", "fit_max_iter_50", "fit_tol_1e-5")
    cold = mixture_cold
    f32_over_f64 = scale["float32"]["jaxem_20_s"] / scale["float64"]["jaxem_20_s"]
    rows = [
        ("cold first fit (after import)", mixture_cold["first_fit"]["wall_s"], 2.0),
        ("new K", mixture_cold["new_k"]["wall_s"], 0.5),
        ("new covariance type", mixture_cold["new_type"]["wall_s"], 0.5),
        ("new N (another row bucket)", mixture_cold["new_n"]["wall_s"], 0.5),
        ("per-row / sample, new bucket (max)", max(mixture_cold[n]["wall_s"] for n in later), 0.1),
        ("n_init 3, max_iter 50, tol changed (max)", max(cold[n]["wall_s"] for n in changed), 0.5),
        ("first GaussianHMM fit", record["hmm_cold"]["steps"]["first_fit"]["wall_s"], 2.0),
        ("second process: first fit", mixture_warm["first_fit"]["wall_s"], 0.5),
        ("second process: first HMM fit", record["hmm_warm"]["steps"]["first_fit"]["wall_s"], 0.5),
        ("GridSearchCV jaxem / sklearn", ratio(grid), 1.5),
        ("GridSearchCV, second process", ratio(grid_warm), 1.5),
        ("jaxem fit K=1-6 x 4 types, cold", record["cli_cold_s"], 5.0),
        ("jaxem fit K=1-6 x 4 types, warm", record["cli_warm_s"], 2.0),
        ("(1e5,16,16) f64 speedup vs sklearn", scale["float64"]["speedup"], 10.0),
        ("(1e5,16,16) f64 overhead (EM iterations)", scale["float64"]["overhead_iters"], 2.0),
        ("(1e5,16,16) f32 / f64 fit time", f32_over_f64, 1.0),
    ]  # fmt: skip
    table = [
        {"measure": name, "value": f"{value:.3f}", "target": f"{target:g}"}
        for name, value, target in rows
    ]
    print_table(table, ["measure", "value", "target"])
    breakdown = []
    for run in ("mixture_cold", "mixture_warm", "hmm_cold", "grid_cold", "grid_warm"):
        for name, values in record[run]["steps"].items():
            if values["wall_s"] > 0.05:
                breakdown.append({
                    "run": run,
                    "step": name,
                    "wall_s": f"{values['wall_s']:.3f}",
                    "trace_s": f"{values.get('trace_s', 0):.3f}",
                    "lower_s": f"{values.get('lower_s', 0):.3f}",
                    "compile_s": f"{values.get('compile_s', 0):.3f}",
                    "programs": int(values.get("programs", 0)),
                })  # fmt: skip
    print_table(breakdown, ["run", "step", "wall_s", "trace_s", "lower_s", "compile_s", "programs"])
    print("imports (s):", {k: round(v, 3) for k, v in record["import_s"].items()})


if __name__ == "__main__":
    main()
