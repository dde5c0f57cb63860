"""Scaling in N: throughput and peak memory of a Gaussian-mixture fit, in memory and out of core.

In memory (N = 10^5 .. 10^7 by default, D = 8, K = 8, full covariances, float32): points x
iterations per second, and the peak RSS (VmHWM) of a fresh process that holds the data and fits it
from a key with default settings. The data are generated chunk by chunk into a 64-byte-aligned
NumPy buffer, which ``jax.device_put`` uses in place, so generating them costs no second copy.
Peaks are given above two baselines: a process that only imports jax, numpy and jaxem, and one
that also runs one tiny jitted function (XLA's runtime and compiler start-up, paid by any JAX
program). The target is a peak below twice the data above the import-only baseline. Two inputs:
a JAX array already on the device, and a NumPy array as NumPy allocates it (16-byte aligned, so
JAX copies it: the user's array and JAX's copy are both resident, 2x the data by themselves).
``--stages`` prints where the memory goes, stage by stage, in one process (it takes ``jaxem.fit``
apart with the drivers' own pieces, so it needs the layout of ``jaxem/drivers/``; the rest runs on
any jaxem with ``jaxem.fit`` and ``jaxem.streaming.fit_stream``, e.g. another checkout named by
``PYTHONPATH``).

scikit-learn runs on the same data in this process at the sizes given by ``--sklearn-max`` for
the ratio. Out of core: a ``.npy`` file of ``--ooc-rows`` x 8 float32 rows (10^8, 3.2 GB, by
default) is written chunk by chunk and fitted by ``jaxem.streaming.fit_stream``: seconds per pass
(of a second, compiled call), points per second, the first call's seconds (compilation included),
and the process's own peak memory. VmHWM counts the memory-mapped file's pages
in the page cache, which the kernel reclaims at will; the anonymous resident memory (RssAnon,
sampled every 10 ms by a thread) is what the process itself holds, and it does not grow with N.

    python benchmarks/scale.py                      # the full run
    python benchmarks/scale.py --sizes 1e5 1e6 --ooc-rows 1e7 1e8
    python benchmarks/scale.py --sizes --ooc-rows 0 --stages 1e7
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    HERE,
    base_parser,
    machine_info,
    peak_rss_of,
    print_table,
    subprocess_env,
    write_json,
)

D, K = 8, 8
ITERS = 10  # --iters

MAKE_DATA = """
import jax, numpy as np
if {aligned}:
    raw = np.empty({n} * {d} * 4 + 64, np.uint8)
    start = -raw.ctypes.data % 64
    host = raw[start : start + {n} * {d} * 4].view(np.float32).reshape({n}, {d})
else:
    host = np.empty(({n}, {d}), np.float32)
rng = np.random.default_rng(0)
centres = 6.0 * rng.normal(size=({k}, {d}))
for lo in range(0, {n}, 1 << 16):  # small chunks: few temporaries
    hi = min(lo + (1 << 16), {n})
    host[lo:hi] = centres[rng.integers(0, {k}, hi - lo)] + rng.normal(size=(hi - lo, {d}))
if {on_device}:
    x = jax.device_put(host)  # aligned: used in place, no copy
    del host
    x.block_until_ready()
else:
    x = host
"""
IMPORTS = "import jax, numpy, jaxem"
WARM_UP = IMPORTS + "\njax.jit(lambda a: a + 1)(numpy.ones(3)).block_until_ready()"

FIT = """
import time, jaxem
algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian({k})))
jaxem.fit(algo, jax.random.key(0), x, max_iter={iters}, tol=0.0).log_likelihood.block_until_ready()
start = time.perf_counter()
result = jaxem.fit(algo, jax.random.key(0), x, max_iter={iters}, tol=0.0)
result.log_likelihood.block_until_ready()
print("SECONDS", time.perf_counter() - start)
"""

# Resident memory after each stage of a fit from a key, in one process (MiB).
STAGES = (
    """
import sys, time
def stage(name):
    fields = {{}}
    for line in open("/proc/self/status"):
        key = line.split(":")[0]
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(line.split()[1]) / 1024
    print("STAGE", name, *(f"{{k}}={{v:.1f}}" for k, v in fields.items()), flush=True)
import jax, numpy as np, jaxem
stage("imports")
import jax.numpy as jnp
jax.jit(lambda a: a + 1)(jnp.ones(3)).block_until_ready()
stage("one tiny jit")
"""
    + MAKE_DATA.replace("if {on_device}:", "stage('data on the host')\nif {on_device}:")
    + """
stage("data on the device")
# jaxem.fit from a key, one stage at a time: the same checks, start and fit program.
from jaxem.core.inputs import prepare_data
from jaxem.core.precision import jit
from jaxem.drivers.fit import run_fit, start_params, take_lane
algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian({k})))
prepared, _ = prepare_data(x, None)
stage("prepare_data (checks)")
algo = algo.for_data(prepared)
rows = algo.rows(prepared, None)
params = take_lane(start_params(algo.model, jax.random.key(0)[None], rows), 0)
jax.block_until_ready(params)
stage("initialisation (compiled and run)")
program = jit(run_fit, static_argnames=("kernel", "max_iter"))
compiled = program.lower(algo.kernel, params, rows, 0.0, {iters}).compile()
stage("fit compiled")
result = compiled(params, rows, 0.0)
result.log_likelihood.block_until_ready()
stage("fit run")
"""
)


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=HERE,
        check=False,
        env=subprocess_env(),
    )
    if done.returncode:
        raise RuntimeError(f"probe failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


def _value(stdout: str, name: str) -> float:
    return float(next(line for line in stdout.splitlines() if line.startswith(name)).split()[1])


def in_memory(n: int, sklearn_max: int, iters: int) -> dict:
    imports = peak_rss_of(IMPORTS)
    warm = peak_rss_of(WARM_UP)
    data_mib = n * D * 4 / 2**20
    row = dict(
        n=n,
        data_mib=data_mib,
        rss_imports_only_mib=imports,
        rss_one_jit_mib=warm,
    )
    for label, on_device, aligned in (("device", True, True), ("numpy", False, False)):
        data = MAKE_DATA.format(n=n, d=D, k=K, aligned=aligned, on_device=on_device)
        fit = "import jaxem\n" + data + FIT.format(k=K, iters=iters)
        peak = peak_rss_of(fit)
        row[f"{label}_rss_fit_mib"] = peak
        # The target: below 2 (the data and at most as much again).
        row[f"{label}_over_data"] = (peak - imports) / data_mib
        row[f"{label}_over_data_after_one_jit"] = (peak - warm) / data_mib
        if on_device:
            row["rss_data_only_mib"] = peak_rss_of("import jaxem\n" + data)
            seconds = _value(_run(fit), "SECONDS")
            row["jaxem_s"] = seconds
            row["jaxem_pts_iter_per_s"] = n * iters / seconds
    if n <= sklearn_max:
        import numpy as np
        from sklearn.mixture import GaussianMixture

        namespace: dict = {}
        exec(MAKE_DATA.format(n=n, d=D, k=K, aligned=True, on_device=False), namespace)
        x = np.asarray(namespace["x"])
        reference = GaussianMixture(K, max_iter=iters, tol=0.0, init_params="random_from_data")
        start = time.perf_counter()
        reference.fit(x)
        row["sklearn_s"] = time.perf_counter() - start
        row["sklearn_over_jaxem"] = row["sklearn_s"] / row["jaxem_s"]
    return row


def stages(n: int, iters: int) -> list[dict]:
    code = STAGES.format(n=n, d=D, k=K, aligned=True, on_device=True, iters=iters)
    rows = []
    for line in _run(code).splitlines():
        if line.startswith("STAGE"):
            name, fields = line[6:].split(" Vm", 1)[0], line.split()[-4:]
            rows.append(
                {"stage": name, **{f.split("=")[0]: float(f.split("=")[1]) for f in fields}}
            )
    return rows


OUT_OF_CORE = """
import threading, time, jax, numpy as np, jaxem
from jaxem import streaming

def anon_mib():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("RssAnon")) / 1024

peak = [anon_mib()]
done = threading.Event()

def sample():
    while not done.wait(0.01):
        peak[0] = max(peak[0], anon_mib())

threading.Thread(target=sample, daemon=True).start()
algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian({k})), chunk_size={chunk})
x = np.load({path!r}, mmap_mode="r")
params = jax.jit(algo.model.init)(jax.random.key(0), np.asarray(x[:{chunk}]), None)
# The first call compiles; the timed call, the same again, runs compiled code. (A call on a
# smaller file is not enough: a jaxem may compile its passes for the file's number of rows.)
start = time.perf_counter()
result = streaming.fit_stream(algo, params, {path!r}, max_iter={passes} - 1, tol=0.0)
result.log_likelihood.block_until_ready()
print("FIRST", time.perf_counter() - start)
start = time.perf_counter()
result = streaming.fit_stream(algo, params, {path!r}, max_iter={passes} - 1, tol=0.0)
result.log_likelihood.block_until_ready()
print("SECONDS", time.perf_counter() - start)
done.set()
print("PEAK_ANON", max(peak[0], anon_mib()))
"""
PASSES = 2  # max_iter=1 runs one iteration's pass and the final pass


def write_file(path: Path, rows: int, chunk: int) -> float:
    import numpy as np

    start = time.perf_counter()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, D))
    rng = np.random.default_rng(0)
    centres = 6.0 * rng.normal(size=(K, D))
    for lo in range(0, rows, chunk):
        hi = min(lo + chunk, rows)
        out[lo:hi] = centres[rng.integers(0, K, hi - lo)] + rng.normal(size=(hi - lo, D))
    out.flush()
    del out
    return time.perf_counter() - start


def out_of_core(rows: int, chunk: int, folder: Path) -> dict:
    path = folder / f"scale_{rows}.npy"
    written = write_file(path, rows, chunk)
    code = OUT_OF_CORE.format(k=K, chunk=chunk, path=str(path), passes=PASSES)
    stdout = _run(code)
    seconds = _value(stdout, "SECONDS")
    first = _value(stdout, "FIRST")
    anon = _value(stdout, "PEAK_ANON")
    hwm = peak_rss_of(code)
    path.unlink()
    return dict(
        rows=rows,
        file_gib=rows * D * 4 / 2**30,
        write_s=written,
        seconds_per_pass=seconds / PASSES,
        pts_per_s=rows * PASSES / seconds,
        # The same fit's first call: compilation included.
        first_call_s=first,
        peak_anon_mib=anon,
        # VmHWM includes the page cache of the mapped file: shown, but not the process's own.
        vmhwm_mib=hwm,
    )


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="*", default=[1e5, 1e6, 1e7])
    parser.add_argument("--sklearn-max", type=float, default=1e6)
    parser.add_argument(
        "--ooc-rows", type=float, nargs="+", default=[1e8], help="0 skips the out-of-core run"
    )
    parser.add_argument("--ooc-chunk", type=int, default=1 << 20)
    parser.add_argument("--iters", type=int, default=ITERS, help="EM iterations per in-memory fit")
    parser.add_argument("--stages", type=float, default=0, help="N of a stage-by-stage probe")
    args = parser.parse_args()
    record: dict = {"machine": machine_info(), "d": D, "k": K, "iters": args.iters}
    if args.stages:
        table = stages(int(args.stages), args.iters)
        print_table(table, list(table[0]))
        record["stages"] = {"n": int(args.stages), "rows": table}
    rows = [in_memory(int(n), int(args.sklearn_max), args.iters) for n in args.sizes]
    if rows:
        print_table(rows, list(rows[-1]))
        record["in_memory"] = rows
    ooc_rows = [int(r) for r in args.ooc_rows if r]
    if ooc_rows:
        with tempfile.TemporaryDirectory() as folder:
            ooc = [out_of_core(r, args.ooc_chunk, Path(folder)) for r in ooc_rows]
        print_table(ooc, list(ooc[0]))
        record["out_of_core"] = ooc
    print("results:", write_json("scale", record, args.out))


if __name__ == "__main__":
    main()
