"""The ``jaxem`` command: ``demo``, ``fit``, ``predict``, ``score`` and ``info``.

Every failure the user can cause (a missing file, a non-numeric column, ragged rows, missing values,
an unknown model, more components than rows) ends with one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

MODELS = ("gmm",)
DEMO_FIGURE = "jaxem-demo.png"


class UsageError(Exception):
    """A problem with the command's input, reported as one line without a traceback."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---- reading data --------------------------------------------------------------------------------


def _parse_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _read_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        sample = handle.read(65536)
        handle.seek(0)
        try:
            dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        rows = [row for row in csv.reader(handle, dialect) if row and any(f.strip() for f in row)]
    if not rows:
        raise UsageError(f"{path} is empty: it needs one row per data point.")
    first = [field.strip() for field in rows[0]]
    has_header = any(_parse_float(field) is None for field in first)
    names = first if has_header else [f"x{i}" for i in range(len(first))]
    body = rows[1:] if has_header else rows
    if not body:
        raise UsageError(f"{path} has a header but no data rows.")
    values = np.empty((len(body), len(names)))
    for i, row in enumerate(body):
        line = i + 1 + has_header
        if len(row) != len(names):
            raise UsageError(
                f"{path}, line {line}: {len(row)} fields where the first row has {len(names)}; "
                "every row needs the same number of columns."
            )
        for j, field in enumerate(row):
            field = field.strip()
            value = math.nan if field.lower() in ("", "na", "nan", "null") else _parse_float(field)
            if value is None:
                raise UsageError(
                    f"{path}, line {line}: column {names[j]!r} holds {field!r}, which is not a "
                    "number; choose numeric columns with --columns."
                )
            values[i, j] = value
    return values, names


def _column_indices(path: Path, names: list[str], columns: Sequence[str]) -> list[int]:
    index = []
    for column in columns:
        if column in names:
            index.append(names.index(column))
        elif column.isdigit() and int(column) < len(names):
            index.append(int(column))
        else:
            raise UsageError(
                f"{path} has no column {column!r}; its columns are {', '.join(names)}."
            )
    return index


def _read_parquet(path: Path, columns: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    try:
        import pyarrow.parquet as parquet
    except ImportError as error:
        raise UsageError(
            f"reading {path} needs pyarrow, which is not installed: pip install pyarrow "
            "(or convert the file to CSV or .npy)."
        ) from error
    # Read only the chosen columns: the others may hold text (or be large).
    names = parquet.read_schema(path).names
    if columns:
        names = [names[i] for i in _column_indices(path, names, columns)]
    table = parquet.read_table(path, columns=names)
    arrays = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        try:
            arrays.append(np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64))
        except (TypeError, ValueError) as error:
            raise UsageError(
                f"{path}: column {name!r} is not numeric; choose numeric columns with --columns."
            ) from error
    return np.stack(arrays, axis=1), list(table.column_names)


def _read_npy(path: Path) -> tuple[np.ndarray, list[str]]:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise UsageError(f"{path} is not a plain numeric .npy array ({error}).") from error
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise UsageError(
            f"{path} holds a {array.ndim}-D {array.dtype} array; a numeric 2-D array (rows x "
            "features) is needed."
        )
    return array.astype(np.float64), [f"x{i}" for i in range(array.shape[1])]


def read_data(
    path: str | Path, columns: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Read a numeric table from CSV (header detected), ``.npy`` or Parquet.

    Args:
        path: the file.
        columns: names (or 0-based indices) of the columns to keep; all of them by default.

    Returns:
        A float64 array ``[N, D]`` and the column names.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"data file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        values, names = _read_npy(path)
    elif suffix in (".parquet", ".pq"):
        values, names = _read_parquet(path, columns)
        columns = None
    else:
        values, names = _read_csv(path)
    if columns:
        index = _column_indices(path, names, columns)
        values, names = values[:, index], [names[i] for i in index]
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise UsageError(
            f"{path} has {int(bad.sum())} missing or non-finite value(s) (first: data row "
            f"{row + 1}, column {names[col]!r}); remove or impute them."
        )
    if values.shape[0] == 0:
        raise UsageError(f"{path} has no data rows.")
    return values, names


def _for_jax(values: np.ndarray) -> np.ndarray:
    """float64 when JAX's 64-bit mode is on (JAX_ENABLE_X64=1), float32 otherwise."""
    import jax

    return values.astype(np.float64 if jax.config.jax_enable_x64 else np.float32)


# ---- argument values -----------------------------------------------------------------------------


def parse_components(text: str) -> list[int]:
    """``"1-8"``, ``"3"`` or ``"2,4,6-8"`` -> the list of K."""
    ks: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise UsageError(
                f"--components {text!r} is not a list of numbers or ranges such as 1-8 or 2,3,5."
            ) from None
        if first < 1 or last < first:
            raise UsageError(f"--components {text!r}: ranges must be increasing and start at 1+.")
        ks.extend(range(first, last + 1))
    return sorted(set(ks))


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


# ---- printing ------------------------------------------------------------------------------------


def _chosen_summary(selection: Any, names: Sequence[str]) -> dict[str, Any]:
    from jaxem.plot import full_covariances

    row = selection.best
    params = selection.params
    return {
        "num_components": row.num_components,
        "covariance_type": row.covariance_type,
        "columns": list(names),
        "weights": np.asarray(params.weights).tolist(),
        "means": np.asarray(params.components.means).tolist(),
        "covariances": full_covariances(selection.model, params).tolist(),
        "log_likelihood": row.log_likelihood,
        selection.criterion: getattr(row, selection.criterion),
    }


def _print_chosen(selection: Any, names: Sequence[str]) -> None:
    summary = _chosen_summary(selection, names)
    row = selection.best
    print(
        f"\nChosen by {selection.criterion.upper()}: K={row.num_components}, "
        f"{row.covariance_type} covariance (restart {row.best_restart}, "
        f"log-likelihood {row.log_likelihood:.2f})"
    )
    with np.printoptions(precision=4, suppress=True):
        for k, (w, mean, cov) in enumerate(
            zip(summary["weights"], summary["means"], summary["covariances"], strict=True)
        ):
            print(f"  component {k}: weight {w:.4f}")
            print(f"    mean       {dict(zip(names, np.round(mean, 4).tolist(), strict=True))}")
            rows = np.array2string(np.asarray(cov), prefix="    covariance ")
            print(f"    covariance {rows}")


def _write_figure(selection: Any, x: np.ndarray, names: Sequence[str], path: Path) -> str:
    from jaxem.plot import plot_selection

    plot_selection(selection, x, columns=names).savefig(path, dpi=110)
    return str(path.resolve())


def _run_selection(args: argparse.Namespace, x: np.ndarray, ks: list[int], types: list[str]) -> Any:
    from jaxem.select import select

    if max(ks) > x.shape[0]:
        raise UsageError(
            f"the data have {x.shape[0]} rows but --components goes up to {max(ks)}: use at most "
            f"{x.shape[0]} components."
        )
    return select(
        _for_jax(x),
        ks,
        types,
        num_restarts=args.restarts,
        key=args.seed,
        reg_covar=args.reg_covar,
        max_iter=args.max_iter,
        tol=args.tol,
        criterion=args.criterion,
        progress=not getattr(args, "json", False) and sys.stderr.isatty(),
    )


# ---- commands ------------------------------------------------------------------------------------


def demo(args: argparse.Namespace) -> int:
    from jaxem.datasets import load_old_faithful
    from jaxem.models.gaussian import COVARIANCE_TYPES

    start = time.perf_counter()
    x, names = load_old_faithful(return_columns=True)
    print(
        f"Old Faithful: {x.shape[0]} eruptions ({', '.join(names)}). Fitting K = 1..6 x "
        f"{len(COVARIANCE_TYPES)} covariance types x {args.restarts} restarts ..."
    )
    selection = _run_selection(args, x, list(range(1, 7)), list(COVARIANCE_TYPES))
    print(f"\n{selection.format_table()}")
    _print_chosen(selection, names)
    try:
        where = _write_figure(selection, x, names, Path(args.plot))
        print(f"\nFigure written to {where}")
    except ImportError as error:
        print(f"\nNo figure: {error}", file=sys.stderr)
    print(f"Done in {time.perf_counter() - start:.1f} s.")
    return 0


def fit_command(args: argparse.Namespace) -> int:
    from jaxem.models.gaussian import COVARIANCE_TYPES

    ks = parse_components(args.components)
    types = _split(args.covariance) or []
    unknown = [t for t in types if t not in COVARIANCE_TYPES]
    if unknown or not types:
        raise UsageError(
            f"--covariance {args.covariance!r}: use some of {','.join(COVARIANCE_TYPES)}, "
            "comma-separated."
        )
    x, names = read_data(args.data, _split(args.columns))
    if max(ks) > x.shape[0]:
        raise UsageError(
            f"{args.data} has {x.shape[0]} rows but --components goes up to {max(ks)}: use at most "
            f"{x.shape[0]} components."
        )
    start = time.perf_counter()
    selection = _run_selection(args, x, ks, types)
    elapsed = time.perf_counter() - start
    figure = _write_figure(selection, x, names, Path(args.plot)) if args.plot else None
    saved = None
    if args.out:
        saved = _save_model(Path(args.out), selection, names)
    if args.json:
        report = {
            "data": str(args.data),
            "rows": x.shape[0],
            "criterion": selection.criterion,
            "table": [row._asdict() for row in selection.rows],
            "chosen": _chosen_summary(selection, names),
            "seconds": elapsed,
            "model_file": saved,
            "figure": figure,
        }
        print(json.dumps(report, indent=2))
        return 0
    print(selection.format_table())
    _print_chosen(selection, names)
    print(f"\nFitted in {elapsed:.1f} s.")
    if saved:
        print(f"Model saved to {saved}")
    if figure:
        print(f"Figure written to {figure}")
    return 0


def _save_model(path: Path, selection: Any, names: Sequence[str]) -> str:
    from jaxem import io

    io.save(path, selection.model, selection.params)
    return str(path.resolve())


def _load_model(path: str) -> tuple[Any, Any]:
    from jaxem import io
    from jaxem.drivers.fit import FitResult

    if not Path(path).is_file():
        raise UsageError(f"model file {path!r} does not exist.")
    model, params = io.load(path, kind="result")
    if isinstance(params, FitResult):
        params = params.params
    if not hasattr(model, "log_resp") or not hasattr(params.components, "means"):
        raise UsageError(f"{path} holds a {type(model).__name__}, not a Gaussian mixture.")
    return model, params


def _checked_rows(params: Any, x: np.ndarray) -> np.ndarray:
    num_features = params.components.means.shape[-1]
    if x.shape[1] != num_features:
        raise UsageError(
            f"the data have {x.shape[1]} columns but the model was fitted on {num_features}; "
            "choose the same columns with --columns."
        )
    return _for_jax(x)


def predict_command(args: argparse.Namespace) -> int:
    model, params = _load_model(args.model)
    x, _ = read_data(args.data, _split(args.columns))
    from jaxem.plot import responsibilities

    resp = responsibilities(model, params, _checked_rows(params, x))
    if args.proba:
        header = [f"p{k}" for k in range(resp.shape[1])]
        table = resp
    else:
        header = ["label"]
        table = resp.argmax(axis=1)[:, None]
    out = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115
    try:
        writer = csv.writer(out)
        writer.writerow(header)
        fmt = (lambda v: f"{v:.6g}") if args.proba else str
        writer.writerows([fmt(v) for v in row] for row in table.tolist())
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"Wrote {table.shape[0]} rows to {Path(args.out).resolve()}", file=sys.stderr)
    return 0


def score_command(args: argparse.Namespace) -> int:
    model, params = _load_model(args.model)
    x, _ = read_data(args.data, _split(args.columns))
    from jaxem.select import log_likelihood

    total = log_likelihood(params, model, _checked_rows(params, x))
    print(f"rows {x.shape[0]}")
    print(f"mean log-likelihood {total / x.shape[0]:.6f}")
    print(f"total log-likelihood {total:.6f}")
    return 0


def info_command(args: argparse.Namespace) -> int:
    model, params = _load_model(args.model)
    comp = model.components
    print(f"model       {type(model).__name__} of {comp.num_components} {type(comp).__name__}")
    for field in ("covariance_type", "reg_covar"):
        if hasattr(comp, field):
            print(f"{field:<11} {getattr(comp, field)}")
    means = np.asarray(params.components.means)
    print(f"features    {means.shape[1]}")
    with np.printoptions(precision=4, suppress=True):
        print(f"weights     {np.asarray(params.weights)}")
        for k, mean in enumerate(means):
            print(f"mean {k:<6} {mean}")
    return 0


# ---- parser --------------------------------------------------------------------------------------


def _add_fit_options(parser: argparse.ArgumentParser, restarts: int) -> None:
    parser.add_argument(
        "--restarts",
        type=int,
        default=restarts,
        help="restarts per cell, run in parallel (default %(default)s)",
    )
    parser.add_argument(
        "--criterion",
        choices=("bic", "aic", "icl"),
        default="bic",
        help="model choice (lower is better; default %(default)s)",
    )
    parser.add_argument(
        "--max-iter", type=int, default=200, help="EM iterations at most (default %(default)s)"
    )
    parser.add_argument(
        "--tol",
        type=float,
        default=1e-4,
        help="stop when the mean log-likelihood changes less (default %(default)s)",
    )
    parser.add_argument(
        "--reg-covar",
        type=float,
        default=1e-6,
        help="added to every covariance diagonal (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")


def _add_input_arguments(parser: argparse.ArgumentParser, *, model: bool) -> None:
    if model:
        parser.add_argument("model", metavar="MODEL", help="a model saved by jaxem fit --out")
    parser.add_argument("data", metavar="DATA", help="CSV (header detected), .npy or .parquet file")
    parser.add_argument("--columns", help="comma-separated column names or indices to use")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jaxem",
        description="Expectation-Maximization on accelerators: fit, choose and use mixture models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    demo_parser = sub.add_parser(
        "demo",
        help="fit Old Faithful over K = 1..6 and all covariance types; plot the chosen model",
        description="Fit the bundled Old Faithful data for K = 1..6 and the four covariance types "
        "with parallel restarts, choose by BIC (never a degenerate fit), print the table and the "
        f"chosen parameters, and write {DEMO_FIGURE} into the current directory.",
    )
    _add_fit_options(demo_parser, restarts=16)
    demo_parser.add_argument(
        "--plot", default=DEMO_FIGURE, help="figure file (default %(default)s)"
    )
    demo_parser.set_defaults(handler=demo)

    fit_parser = sub.add_parser(
        "fit",
        help="fit mixtures over a grid of K and covariance types and keep the best",
        description="Read DATA (CSV with or without header, .npy, or Parquet), fit every K and "
        "covariance type with parallel restarts, print the table and the chosen fit.",
    )
    _add_input_arguments(fit_parser, model=False)
    fit_parser.add_argument(
        "--model", choices=MODELS, default="gmm", help="model family (default %(default)s)"
    )
    fit_parser.add_argument(
        "--components", default="1-8", help="K to try, e.g. 1-8 or 2,3,5 (default %(default)s)"
    )
    fit_parser.add_argument(
        "--covariance",
        default="full,tied,diag,spherical",
        help="covariance types, comma-separated (default %(default)s)",
    )
    fit_parser.add_argument("--out", metavar="MODEL", help="save the chosen model to this file")
    fit_parser.add_argument("--plot", metavar="PNG", help="write a figure of the chosen fit")
    fit_parser.add_argument("--json", action="store_true", help="print the results as JSON")
    _add_fit_options(fit_parser, restarts=16)
    fit_parser.set_defaults(handler=fit_command)

    predict_parser = sub.add_parser(
        "predict",
        help="label the rows of DATA with a saved model",
        description="Print (or write) the most likely component of every row, or with --proba the "
        "probability of each component, as CSV.",
    )
    _add_input_arguments(predict_parser, model=True)
    predict_parser.add_argument(
        "--proba", action="store_true", help="component probabilities instead of labels"
    )
    predict_parser.add_argument(
        "--out", metavar="FILE", help="write the CSV here instead of stdout"
    )
    predict_parser.set_defaults(handler=predict_command)

    score_parser = sub.add_parser(
        "score",
        help="log-likelihood of DATA under a saved model",
        description="Print the mean and total log-likelihood of the rows of DATA.",
    )
    _add_input_arguments(score_parser, model=True)
    score_parser.set_defaults(handler=score_command)

    info_parser = sub.add_parser(
        "info",
        help="describe a saved model",
        description="Print a saved model's settings and parameters.",
    )
    info_parser.add_argument("model", metavar="MODEL", help="a model saved by jaxem fit --out")
    info_parser.set_defaults(handler=info_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxem`` command."""
    args = build_parser().parse_args(argv)
    for name in ("restarts", "max_iter"):
        if getattr(args, name, 1) < 1:
            print(
                f"jaxem {args.command}: error: --{name.replace('_', '-')} must be at least 1.",
                file=sys.stderr,
            )
            return 2
    try:
        return args.handler(args)
    except (UsageError, ValueError, OSError, ImportError) as error:
        message = " ".join(str(error).split())
        print(f"jaxem {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"jaxem {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
