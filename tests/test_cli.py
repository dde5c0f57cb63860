"""The jaxem command: demo, fit and its one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxem import cli
from jaxem.datasets import load_old_faithful
from jaxem.select import select

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _csv(path, header, rows):
    lines = ([",".join(header)] if header else []) + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def faithful_csv(tmp_path_factory):
    x = load_old_faithful()[:120]
    return _csv(tmp_path_factory.mktemp("data") / "faithful.csv", ["eruptions", "waiting"], x)


@pytest.mark.parametrize("command", ["demo", "fit", "predict", "score", "info"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: jaxem {command}")


@pytest.mark.timeout(240)
def test_fit_prints_json_that_matches_select(faithful_csv, tmp_path, capsys):
    figure = tmp_path / "fit.png"
    grid = ["--components", "1-2", "--covariance", "diag,spherical", "--restarts", "2"]
    code, out, err = run(
        ["fit", faithful_csv, *grid, "--json", "--plot", figure, "--seed", "3"], capsys
    )
    assert code == 0, err
    report = json.loads(out)
    x = load_old_faithful()[:120]
    want = select(x, (1, 2), ("diag", "spherical"), num_restarts=2, key=3, max_iter=200, tol=1e-4)
    assert [(r["num_components"], r["covariance_type"]) for r in report["table"]] == [
        (r.num_components, r.covariance_type) for r in want.rows
    ]
    np.testing.assert_allclose([r["bic"] for r in report["table"]], [r.bic for r in want.rows])
    chosen = report["chosen"]
    assert (chosen["num_components"], chosen["covariance_type"]) == (
        want.best.num_components,
        want.best.covariance_type,
    )
    assert chosen["columns"] == ["eruptions", "waiting"]
    np.testing.assert_allclose(chosen["means"], np.asarray(want.params.components.means))
    assert figure.read_bytes()[:8] == PNG_MAGIC
    assert report["figure"] == str(figure.resolve())


def test_fit_reads_npy_and_selects_columns(tmp_path, capsys):
    x = load_old_faithful()[:80]
    np.save(tmp_path / "x.npy", x)
    _csv(tmp_path / "x.csv", ["a", "eruptions", "b"], np.column_stack([x[:, 1], x[:, 0], x[:, 1]]))
    outputs = []
    for args in (
        [tmp_path / "x.npy", "--columns", "0"],
        [tmp_path / "x.csv", "--columns", "eruptions"],
    ):
        code, out, err = run(
            [
                "fit",
                *args,
                "--components",
                "2",
                "--covariance",
                "full",
                "--restarts",
                "2",
                "--json",
            ],
            capsys,
        )
        assert code == 0, err
        outputs.append(json.loads(out)["chosen"])
    np.testing.assert_allclose(outputs[0]["means"], outputs[1]["means"])
    assert outputs[1]["columns"] == ["eruptions"]


@pytest.mark.timeout(240)
def test_fit_predict_score_read_parquet_columns(tmp_path, capsys):
    """Parquet with a text column: --columns picks the numbers; the results equal the CSV's."""
    parquet = pytest.importorskip("pyarrow.parquet")
    pyarrow = pytest.importorskip("pyarrow")
    x = load_old_faithful()[:80]
    names = [f"r{i}" for i in range(len(x))]
    table = pyarrow.table({"name": names, "waiting": x[:, 1], "eruptions": x[:, 0]})
    parquet.write_table(table, tmp_path / "x.parquet")
    _csv(tmp_path / "x.csv", ["eruptions", "waiting"], x)
    select_parquet = ["--columns", "eruptions,waiting"]
    grid = ["--components", "2", "--covariance", "full", "--restarts", "2", "--json"]

    code, out, err = run(
        ["fit", tmp_path / "x.parquet", *select_parquet, *grid, "--out", tmp_path / "p.jaxem"],
        capsys,
    )
    assert code == 0, err
    from_parquet = json.loads(out)["chosen"]
    code, out, err = run(["fit", tmp_path / "x.csv", *grid], capsys)
    assert code == 0, err
    from_csv = json.loads(out)["chosen"]
    assert from_parquet["columns"] == ["eruptions", "waiting"]
    np.testing.assert_allclose(from_parquet["means"], from_csv["means"])

    from jaxem import io
    from jaxem.plot import responsibilities
    from jaxem.select import log_likelihood

    model, params = io.load(tmp_path / "p.jaxem")
    code, out, err = run(
        ["predict", tmp_path / "p.jaxem", tmp_path / "x.parquet", *select_parquet], capsys
    )
    assert code == 0, err
    labels = [int(v) for v in out.splitlines()[1:]]
    np.testing.assert_array_equal(labels, responsibilities(model, params, x).argmax(axis=1))

    code, out, err = run(
        ["score", tmp_path / "p.jaxem", tmp_path / "x.parquet", *select_parquet], capsys
    )
    assert code == 0, err
    total = float(out.splitlines()[2].split()[-1])
    assert total == pytest.approx(log_likelihood(params, model, x), rel=1e-6)

    # Without --columns the text column is refused by name.
    code, out, err = run(["score", tmp_path / "p.jaxem", tmp_path / "x.parquet"], capsys)
    assert (code, out) == (1, "")
    assert err == (
        f"jaxem score: error: {tmp_path}/x.parquet: column 'name' is not numeric; choose numeric "
        "columns with --columns.\n"
    )


def _fit(argv):
    return ["fit", *argv]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: [d / "nope.csv"], "data file '{d}/nope.csv' does not exist."),
        (
            lambda d: [_csv(d / "t.csv", ["a", "b"], [[1, 2], [3, "x"]])],
            "{d}/t.csv, line 3: column 'b' holds 'x', which is not a number; choose numeric "
            "columns with --columns.",
        ),
        (
            lambda d: [_csv(d / "t.csv", ["a", "b"], [[1, 2], [3]])],
            "{d}/t.csv, line 3: 1 fields where the first row has 2; every row needs the same "
            "number of columns.",
        ),
        (
            lambda d: [_csv(d / "t.csv", None, [[1, 2], [3, "nan"], [4, 5]])],
            "{d}/t.csv has 1 missing or non-finite value(s) (first: data row 2, column 'x1'); "
            "remove or impute them.",
        ),
        (
            lambda d: [_csv(d / "t.csv", None, [[1, 2], [3, 4]]), "--components", "1-3"],
            "{d}/t.csv has 2 rows but --components goes up to 3: use at most 2 components.",
        ),
        (
            lambda d: [_csv(d / "t.csv", None, [[1, 2], [3, 4]]), "--columns", "c"],
            "{d}/t.csv has no column 'c'; its columns are x0, x1.",
        ),
        (
            lambda d: [_csv(d / "t.csv", None, [[1, 2], [3, 4]]), "--components", "two"],
            "--components 'two' is not a list of numbers or ranges such as 1-8 or 2,3,5.",
        ),
        (
            lambda d: [_csv(d / "t.csv", None, [[1, 2], [3, 4]]), "--covariance", "banded"],
            "--covariance 'banded': use some of full,tied,diag,spherical, comma-separated.",
        ),
        (
            lambda d: [_csv(d / "t.parquet", None, [[1, 2]])],
            "reading {d}/t.parquet needs pyarrow, which is not installed: pip install pyarrow "
            "(or convert the file to CSV or .npy).",
        ),
    ],
)
def test_bad_input_is_one_line_on_stderr(setup, message, tmp_path, capsys, monkeypatch):
    # A None entry in sys.modules makes the import fail, as on a machine without pyarrow.
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    code, out, err = run(_fit(setup(tmp_path)), capsys)
    assert code == 1
    assert out == ""
    assert err == f"jaxem fit: error: {message.format(d=tmp_path)}\n"


def test_unknown_model_is_one_line_on_stderr(faithful_csv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["fit", str(faithful_csv), "--model", "hmm"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("jaxem fit: error: argument --model: invalid choice: 'hmm'")


def test_parse_components():
    assert cli.parse_components("1-4") == [1, 2, 3, 4]
    assert cli.parse_components("2,5,3-4,2") == [2, 3, 4, 5]
    with pytest.raises(cli.UsageError):
        cli.parse_components("3-1")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_as_a_fresh_process(tmp_path):
    """`jaxem demo` with no arguments, in float32 as a user gets it: table, choice and figure."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_ENABLE_X64": "0", "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, "-m", "jaxem.cli", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert sum(line.startswith("*") for line in lines) == 1
    assert "Chosen by BIC: K=3, tied covariance" in done.stdout
    assert (tmp_path / cli.DEMO_FIGURE).read_bytes()[:8] == PNG_MAGIC
    assert f"Figure written to {tmp_path / cli.DEMO_FIGURE}" in done.stdout


@pytest.mark.timeout(240)
def test_saved_model_predicts_scores_and_describes(faithful_csv, tmp_path, capsys):
    pytest.importorskip("jaxem.io")
    model_file = tmp_path / "model.jaxem"
    grid = ["--components", "2", "--covariance", "full", "--restarts", "2"]
    code, out, err = run(["fit", faithful_csv, *grid, "--out", model_file], capsys)
    assert code == 0, err
    assert f"Model saved to {model_file.resolve()}" in out

    from jaxem import io
    from jaxem.plot import responsibilities

    model, params = io.load(model_file)
    x = load_old_faithful()[:120]
    resp = responsibilities(model, params, x)

    code, out, err = run(["predict", model_file, faithful_csv], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "label"
    np.testing.assert_array_equal([int(v) for v in lines[1:]], resp.argmax(axis=1))

    proba_file = tmp_path / "proba.csv"
    code, out, err = run(
        ["predict", model_file, faithful_csv, "--proba", "--out", proba_file], capsys
    )
    assert code == 0, err
    table = np.loadtxt(proba_file, delimiter=",", skiprows=1)
    np.testing.assert_allclose(table, resp, rtol=1e-5, atol=1e-7)

    code, out, err = run(["score", model_file, faithful_csv], capsys)
    assert code == 0, err
    from jaxem.select import log_likelihood

    total = float(out.splitlines()[2].split()[-1])
    assert total == pytest.approx(log_likelihood(params, model, x), rel=1e-6)

    code, out, err = run(["info", model_file], capsys)
    assert code == 0, err
    assert "Mixture of 2 Gaussian" in out and "covariance_type full" in out

    code, out, err = run(["predict", model_file, tmp_path / "missing.csv"], capsys)
    assert (code, out) == (1, "")
    assert err == f"jaxem predict: error: data file '{tmp_path}/missing.csv' does not exist.\n"

    np.save(tmp_path / "three.npy", np.ones((4, 3)))
    code, out, err = run(["score", model_file, tmp_path / "three.npy"], capsys)
    assert code == 1
    assert err == (
        "jaxem score: error: the data have 3 columns but the model was fitted on 2; choose the "
        "same columns with --columns.\n"
    )


def test_readme_test_command_is_what_ci_runs():
    """The README's set-up commands are the two in its Set up section; the test one is .ci/run."""
    readme = (REPO / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = [block.split("\n", 1)[1].strip() for block in setup.split("```bash")[1:]]
    commands = [c.split("```", 1)[0].strip() for c in commands]
    assert len(commands) == 2
    demo, tests = commands
    assert demo.endswith('pip install ".[plot]" && jaxem demo')
    assert tests.endswith('pip install ".[test]" && python -m pytest')
    ci = (REPO / ".ci" / "run").read_text()
    for step in tests.split(" && "):
        assert step in ci, step
