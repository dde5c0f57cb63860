"""The store of compiled programs: reused by a second process, safe to turn off, self-repairing."""

import json
import os
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem.core import program_cache
from jaxem.core.program_cache import NotStable, cached_jit, stable_description

REPO = Path(__file__).resolve().parent.parent

# Fits of several families and an HMM; prints their results and the programs compiled.
SCRIPT = textwrap.dedent(
    """
    import json, warnings
    import jax, numpy as np
    import jaxem
    from jaxem.datasets import load_old_faithful
    from jaxem.testing import count_compilations

    warnings.simplefilter("ignore")
    x = load_old_faithful()
    counts = np.random.default_rng(0).poisson(3.0, size=(200, 2)).astype(float)
    with count_compilations() as compiled:
        full = jaxem.GaussianMixture(3, random_state=0).fit(x)
        tied = jaxem.GaussianMixture(2, covariance_type="tied", n_init=2, random_state=0).fit(x)
        poisson = jaxem.MixtureModel(jaxem.Poisson(2), random_state=0).fit(counts)
        hmm = jaxem.GaussianHMM(2, n_iter=20, random_state=0).fit(x)
        out = {
            "full": full.means_.tolist(),
            "full_proba": full.predict_proba(x[:50]).tolist(),
            "sample": full.sample(5)[0].tolist(),
            "tied": tied.covariances_.tolist(),
            "poisson": jax.tree.map(np.ndarray.tolist, poisson.params_)._asdict()["weights"],
            "hmm": hmm.transmat_.tolist(),
            "hmm_score": hmm.score(x),
        }
    print("RESULT", json.dumps({"out": out, "compiled": len(compiled)}))
    """
)


def run_script(cache: str) -> dict:
    env = dict(os.environ, JAXEM_CACHE_DIR=cache, JAX_ENABLE_X64="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_second_process_loads_every_program_and_gets_the_same_results(tmp_path):
    first = run_script(str(tmp_path))
    stored = list(tmp_path.glob("*.jaxem-program"))
    assert first["compiled"] > 0 and stored
    second = run_script(str(tmp_path))
    assert second["compiled"] == 0  # nothing traced or compiled: everything came from the store
    assert second["out"] == first["out"]  # bitwise: the same executables
    off = run_script("off")
    assert off["compiled"] > 0 and off["out"] == first["out"]


@partial(cached_jit, static_argnames=("power",))
def power_sum(a, power):
    return jnp.sum(a**power)


def test_programs_are_stored_and_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXEM_CACHE_DIR", str(tmp_path))
    program_cache.clear_memory()
    before = dict(power_sum.stats)
    assert float(power_sum(jnp.arange(4.0), power=2)) == 14.0
    assert len(list(tmp_path.glob("*.jaxem-program"))) == 1
    assert power_sum.stats["stored"] == before["stored"] + 1
    program_cache.clear_memory()
    assert float(power_sum(jnp.arange(4.0), power=2)) == 14.0
    assert power_sum.stats["loaded"] == before["loaded"] + 1
    # Another static value or shape is another program.
    assert float(power_sum(jnp.arange(3.0), power=3)) == 9.0
    assert len(list(tmp_path.glob("*.jaxem-program"))) == 2
    assert program_cache.clear_cache() == 2
    assert list(tmp_path.glob("*.jaxem-program")) == []


def test_a_corrupt_entry_is_dropped_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXEM_CACHE_DIR", str(tmp_path))
    program_cache.clear_memory()
    power_sum(jnp.arange(5.0), power=1)
    (path,) = tmp_path.glob("*.jaxem-program")
    path.write_bytes(b"not a program")
    program_cache.clear_memory()
    compiled = power_sum.stats["compiled"]
    assert float(power_sum(jnp.arange(5.0), power=1)) == 10.0
    assert power_sum.stats["compiled"] == compiled + 1
    assert path.read_bytes() != b"not a program"  # written again, whole


@pytest.mark.parametrize("setting", ["off", "0", ""])
def test_the_store_can_be_turned_off(tmp_path, monkeypatch, setting):
    monkeypatch.setenv("JAXEM_CACHE_DIR", setting)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert program_cache.cache_dir() is None
    program_cache.clear_memory()
    x = np.random.default_rng(0).normal(size=(40, 2))
    jaxem.GaussianMixture(2, random_state=0).fit(x)
    assert not any(tmp_path.rglob("*.jaxem-program"))


def test_the_default_folder_is_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("JAXEM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if sys.platform.startswith("linux"):
        assert program_cache.cache_dir() == tmp_path / "jaxem"
    monkeypatch.setenv("JAXEM_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert program_cache.cache_dir() == tmp_path / "elsewhere"


def test_only_jaxem_configuration_is_described():
    family = jaxem.Gaussian(3, covariance_type="diag")
    text = stable_description((family, 7, None))
    assert "jaxem.models.gaussian.Gaussian(num_components=3" in text
    assert stable_description(jaxem.Mixture(family)) != stable_description(
        jaxem.Mixture(jaxem.Gaussian(4, covariance_type="diag"))
    )
    with pytest.raises(NotStable):
        stable_description(lambda a: a)
    with pytest.raises(NotStable):
        stable_description(np.ones(2))


def test_a_program_with_a_user_function_runs_without_being_stored(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXEM_CACHE_DIR", str(tmp_path))

    @partial(cached_jit, static_argnames=("fn",))
    def apply(a, fn):
        return fn(a)

    assert float(apply(jnp.ones(()), fn=lambda a: a + 1)) == 2.0
    assert apply.stats["compiled"] == 1 and apply.stats["stored"] == 0
    assert list(tmp_path.glob("*.jaxem-program")) == []


def test_the_store_keeps_the_most_recently_used_programs(tmp_path):
    for i in range(10):
        path = tmp_path / f"{i}{program_cache.SUFFIX}"
        path.write_bytes(b"x")
        os.utime(path, (i, i))
    assert program_cache.prune(tmp_path, limit=12) == 0
    assert program_cache.prune(tmp_path, limit=8) == 4  # down to 8, less a quarter of 8
    kept = sorted(int(path.name.split(".")[0]) for path in tmp_path.glob("*.jaxem-program"))
    assert kept == [4, 5, 6, 7, 8, 9]
