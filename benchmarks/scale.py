"""Scaling in N: throughput and peak memory of a Gaussian-mixture fit, in memory and out of core.

In memory (N = 10^5 .. 10^7 by default, D = 8, K = 8, full covariances, float32): points x
iterations per second, and the peak RSS (VmHWM) of a fresh process that holds the data and fits it
from a key, against a process that only imports jax, numpy and jaxem; the target is a peak below
twice the data above that baseline. The data are generated chunk by chunk into a 64-byte-aligned
buffer that ``jax.device_put`` uses in place, so generating them costs no second copy.
scikit-learn runs on the same data in this process at the
sizes given by ``--sklearn-max`` for the ratio. Out of core: a ``.npy`` file of ``--ooc-rows`` x 8
float32 rows (10^8, 3.2 GB, by default) is written chunk by chunk and fitted by
``jaxem.streaming.fit_stream``: seconds per pass and peak RSS (memory stays flat in N beyond the
data: the file is memory-mapped and read one chunk at a time).

    python benchmarks/scale.py                      # the full run
    python benchmarks/scale.py --sizes 1e5 1e6 --ooc-rows 1e7
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import base_parser, machine_info, peak_rss_of, print_table, write_json

D, K = 8, 8
ITERS = 10  # --iters

MAKE_DATA = """
import jax, numpy as np
raw = np.empty({n} * {d} * 4 + 64, np.uint8)
start = -raw.ctypes.data % 64
host = raw[start : start + {n} * {d} * 4].view(np.float32).reshape({n}, {d})
rng = np.random.default_rng(0)
centres = 6.0 * rng.normal(size=({k}, {d}))
for lo in range(0, {n}, 1 << 16):  # small chunks: few temporaries
    hi = min(lo + (1 << 16), {n})
    host[lo:hi] = centres[rng.integers(0, {k}, hi - lo)] + rng.normal(size=(hi - lo, {d}))
x = jax.device_put(host)  # aligned: used in place, no copy
del host
x.block_until_ready()
"""
IMPORTS = "import jax, numpy, jaxem"

FIT = """
import time, jaxem
algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian({k})))
jaxem.fit(algo, jax.random.key(0), x, max_iter={iters}, tol=0.0).log_likelihood.block_until_ready()
start = time.perf_counter()
result = jaxem.fit(algo, jax.random.key(0), x, max_iter={iters}, tol=0.0)
result.log_likelihood.block_until_ready()
print("SECONDS", time.perf_counter() - start)
"""


def _seconds(code: str) -> float:
    import subprocess
    import sys

    from common import REPO_ROOT

    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=True,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    return float(
        next(line for line in done.stdout.splitlines() if line.startswith("SECONDS")).split()[1]
    )


def in_memory(n: int, sklearn_max: int, iters: int) -> dict:
    data = MAKE_DATA.format(n=n, d=D, k=K)
    fit = "import jaxem\n" + data + FIT.format(k=K, iters=iters)
    imports = peak_rss_of(IMPORTS)
    data_only = peak_rss_of("import jaxem\n" + data)
    peak = peak_rss_of(fit)
    seconds = _seconds(fit)
    data_mib = n * D * 4 / 2**20
    row = dict(
        n=n,
        jaxem_s=seconds,
        jaxem_pts_iter_per_s=n * iters / seconds,
        data_mib=data_mib,
        rss_imports_only_mib=imports,
        rss_data_only_mib=data_only,
        rss_fit_mib=peak,
        # The target: below 2 (the data and at most as much again).
        fit_over_data=(peak - imports) / data_mib,
    )
    if n <= sklearn_max:
        import numpy as np
        from sklearn.mixture import GaussianMixture

        namespace: dict = {}
        exec(data, namespace)
        x = np.asarray(namespace["x"])
        reference = GaussianMixture(K, max_iter=iters, tol=0.0, init_params="random_from_data")
        start = time.perf_counter()
        reference.fit(x)
        row["sklearn_s"] = time.perf_counter() - start
        row["sklearn_over_jaxem"] = row["sklearn_s"] / seconds
    return row


def out_of_core(rows: int, chunk: int, folder: Path) -> dict:
    path = folder / "scale.npy"
    start = time.perf_counter()
    import numpy as np

    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, D))
    rng = np.random.default_rng(0)
    centres = 6.0 * rng.normal(size=(K, D))
    for lo in range(0, rows, chunk):
        hi = min(lo + chunk, rows)
        out[lo:hi] = centres[rng.integers(0, K, hi - lo)] + rng.normal(size=(hi - lo, D))
    out.flush()
    del out
    written = time.perf_counter() - start
    passes = 2
    code = f"""
import time, jax, numpy as np, jaxem
from jaxem import streaming
algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian({K})), chunk_size={chunk})
x = np.load({str(path)!r}, mmap_mode="r")
params = jax.jit(algo.model.init)(jax.random.key(0), np.asarray(x[:{chunk}]), None)
start = time.perf_counter()
result = streaming.fit_stream(algo, params, {str(path)!r}, max_iter={passes - 1}, tol=0.0)
print("SECONDS", time.perf_counter() - start)
"""
    # max_iter=1 runs one iteration's pass and the final pass: two passes.
    seconds = _seconds(code)
    peak = peak_rss_of(code)
    baseline = peak_rss_of(IMPORTS)
    return dict(
        rows=rows,
        file_gib=rows * D * 4 / 2**30,
        write_s=written,
        seconds_per_pass=seconds / passes,
        pts_per_s=rows * passes / seconds,
        rss_mib=peak,
        rss_imports_only_mib=baseline,
        rss_over_imports_mib=peak - baseline,
    )


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7])
    parser.add_argument("--sklearn-max", type=float, default=1e6)
    parser.add_argument("--ooc-rows", type=float, default=1e8, help="0 skips the out-of-core run")
    parser.add_argument("--ooc-chunk", type=int, default=1 << 20)
    parser.add_argument("--iters", type=int, default=ITERS, help="EM iterations per in-memory fit")
    args = parser.parse_args()
    rows = [in_memory(int(n), int(args.sklearn_max), args.iters) for n in args.sizes]
    print_table(
        rows,
        [
            "n",
            "jaxem_s",
            "jaxem_pts_iter_per_s",
            "sklearn_s",
            "sklearn_over_jaxem",
            "data_mib",
            "rss_imports_only_mib",
            "rss_data_only_mib",
            "rss_fit_mib",
            "fit_over_data",
        ],
    )
    record = {"machine": machine_info(), "d": D, "k": K, "iters": args.iters, "in_memory": rows}
    if args.ooc_rows:
        with tempfile.TemporaryDirectory() as folder:
            ooc = out_of_core(int(args.ooc_rows), args.ooc_chunk, Path(folder))
        print_table([ooc], list(ooc))
        record["out_of_core"] = ooc
    print("results:", write_json("scale", record))


if __name__ == "__main__":
    main()
