"""Two real processes on 127.0.0.1 (jax.distributed, CPU collectives via gloo), each holding half of
the rows, give the same fit as one process."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem

REPO = Path(__file__).resolve().parent.parent
NUM_POINTS = 603  # odd: the two halves differ in length, so one process pads a row of weight 0

WORKER = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_enable_x64", True)
import numpy as np
import jaxem
from jaxem import parallel

port, process_id, data_path, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
parallel.initialize_distributed(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
assert jax.process_count() == 2 and len(jax.devices()) == 2
data = np.load(data_path)
rows = parallel.process_rows(len(data["x"]))
x, weights = data["x"][rows], data["w"][rows]  # each process loads only its own rows
init = jaxem.MixtureParams(
    data["weights"], jaxem.GaussianParams(data["means"], data["precision_cholesky"])
)
algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)), chunk_size=64)
result = parallel.fit_sharded(algo, init, x, weights, max_iter=20, tol=0.0)
out = dict(
    means=np.asarray(result.params.components.means),
    weights=np.asarray(result.params.weights),
    prec=np.asarray(result.params.components.precision_cholesky),
    loglik=np.asarray(result.log_likelihood),
    history=np.asarray(result.history),
    rows=np.asarray([rows.start, rows.stop]),
)
np.savez(out_path, **out)
jax.distributed.shutdown()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(300, 3)) + 3, rng.normal(size=(NUM_POINTS - 300, 3)) - 3])
    return rng.permutation(x), rng.uniform(0.5, 2.0, NUM_POINTS)


@pytest.mark.timeout(240)
def test_two_processes_equal_one_process(tmp_path):
    x, w = make_data()
    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)), chunk_size=64)
    init = algo.model.init(jax.random.key(3), jnp.asarray(x), None)
    np.savez(
        tmp_path / "data.npz",
        x=x,
        w=w,
        weights=init.weights,
        means=init.components.means,
        precision_cholesky=init.components.precision_cholesky,
    )
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    # One host device per process, whatever the environment says.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(port),
                str(i),
                str(tmp_path / "data.npz"),
                str(tmp_path / f"out{i}.npz"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        logs = [proc.communicate(timeout=200)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log[-4000:]

    expected = jaxem.fit(algo, init, x, w, max_iter=20, tol=0.0)
    outs = [dict(np.load(tmp_path / f"out{i}.npz")) for i in range(2)]
    assert outs[0]["rows"].tolist() == [0, 302] and outs[1]["rows"].tolist() == [302, NUM_POINTS]
    for out in outs:
        np.testing.assert_allclose(out["means"], expected.params.components.means, atol=1e-10)
        np.testing.assert_allclose(out["weights"], expected.params.weights, atol=1e-10)
        np.testing.assert_allclose(
            out["prec"], expected.params.components.precision_cholesky, atol=1e-10
        )
        np.testing.assert_allclose(out["loglik"], expected.log_likelihood, atol=1e-10)
        np.testing.assert_allclose(out["history"], expected.history, atol=1e-10)
