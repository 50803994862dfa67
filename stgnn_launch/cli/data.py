"""stgnn-data: convert, inspect, build and generate the data files a run reads.

    stgnn-data convert INPUT --out FILE.h5 [--start --freq --key --axis-order]
    stgnn-data inspect FILE [--graph] [--key --start --freq --axis-order]
    stgnn-data graph --distances FILE --sensor-ids FILE --out OUT [--threshold 0.1]
    stgnn-data generate --nodes N --steps T --seed S --out FILE.h5 [--start --freq]

`inspect` treats a .pkl as a graph always, a .csv or .npy as a graph with --graph or when it looks like
one (square, non-negative, and 0/1, symmetric, or with a constant 0 or 1 diagonal: a series of as many
steps as sensors would not be), and everything else as a series. Bad input ends with one line on stderr,
"stgnn-data: error: ...", and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stgnn_launch.cli.entry import run_command
from stgnn_launch.config.schema import AxisOrder
from stgnn_launch.data.readers import convert_to_native, read_series
from stgnn_launch.data.readers.hdf5_native import native_shape
from stgnn_launch.data.readers.tabular import DEFAULT_FREQ, DEFAULT_START
from stgnn_launch.data.summary import describe_graph, describe_series, format_summary
from stgnn_launch.errors import UserError

PROG = "stgnn-data"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # OSError too: an unwritable output or a full disk, whose message names the file
    return run_command(PROG, lambda: args.run(args), errors=(UserError, OSError))


def _convert(args: argparse.Namespace) -> None:
    out = convert_to_native(args.input, args.out, key=args.key, start=args.start, freq=args.freq,
                            axis_order=args.axis_order)
    steps, nodes, features = native_shape(out)
    print(f"wrote {out}: {steps} steps x {nodes} sensors x {features} features")


def _inspect(args: argparse.Namespace) -> None:
    path = Path(args.file)
    guessed = None if args.graph or path.suffix.lower() == ".pkl" else _graph_like(path)
    if args.graph or path.suffix.lower() == ".pkl" or guessed:
        from stgnn_launch.data.graph import load_graph  # lazy: the graph module is optional for series work

        adjacency, sensor_ids = load_graph(path)
        summary = {"file": str(path), **describe_graph(adjacency),
                   "sensor_ids": "stored" if sensor_ids else "not stored"}
        if guessed:
            summary["read as"] = (f"a graph ({guessed}; --graph says so, and it goes in dataset.adj_path), "
                                  "not a series")
        print(format_summary(summary))
        return
    try:
        series = read_series(path, key=args.key, start=args.start, freq=args.freq, axis_order=args.axis_order)
    except UserError as err:
        raise UserError(f"{err}{_axis_order_hint(path, str(err))}") from None
    print(format_summary({"file": str(path), **describe_series(series)}))
    if series.graph is not None:
        print(format_summary({"graph": "stored", **describe_graph(series.graph)}))


def _graph_like(path: Path) -> str | None:
    """Why a .csv or .npy file without --graph looks like an adjacency matrix rather than a series, or None.

    Only a file with as many rows as columns (one more for a header of ids) is read again as a matrix."""
    from stgnn_launch.data.graph import load_graph

    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        except (OSError, ValueError):
            return None
        if len(shape) != 2 or shape[0] != shape[1]:
            return None
    elif suffix == ".csv":
        try:
            with open(path, "rb") as handle:
                columns, rows = handle.readline().count(b",") + 1, 1
                for line in handle:  # stops past a square's rows: a long series is not read through
                    rows += bool(line.strip())
                    if rows > columns + 1:
                        return None
        except OSError:
            return None
        if rows < columns:
            return None
    else:
        return None
    try:
        a, _ = load_graph(path)
    except UserError:
        return None
    n = a.shape[0]
    diagonal = np.diagonal(a)
    if n < 2 or bool((a < 0).any()):
        return None
    if bool(np.isin(a, (0.0, 1.0)).all()):
        return f"a square {n} x {n} matrix of 0/1"
    if np.allclose(a, a.T, rtol=1e-6, atol=0):
        return f"a square, symmetric, non-negative {n} x {n} matrix"
    if bool((diagonal == 0).all()) or (bool((diagonal == 1).all()) and float(a.max()) <= 1):
        return f"a square, non-negative {n} x {n} matrix with a diagonal of {int(diagonal[0])}"
    return None


def _axis_order_hint(path: Path, message: str) -> str:
    """For an array of other dimensions than --axis-order: the orders that fit it."""
    if "-d array for axis order" not in message:
        return ""
    import re

    found = re.search(r"found shape \(([^)]*)\)", message)
    ndim = len([d for d in found.group(1).split(",") if d.strip()]) if found else 0
    fitting = [order for order in AxisOrder if len(order) == ndim]
    if not fitting:
        return ""
    return (f"; pass --axis-order {' or '.join(fitting)} (T time steps, N sensors, F features; "
            f"dataset.axis_order=... for stgnn-train)")


def _graph(args: argparse.Namespace) -> None:
    from stgnn_launch.data.graph import gaussian_kernel_adjacency, read_sensor_ids, save_graph

    sensor_ids = read_sensor_ids(args.sensor_ids)
    adjacency = gaussian_kernel_adjacency(args.distances, sensor_ids, threshold=args.threshold)
    out = save_graph(args.out, adjacency, sensor_ids)
    print(f"wrote {out}")
    print(format_summary(describe_graph(adjacency)))


def _generate(args: argparse.Namespace) -> None:
    from stgnn_launch.data.synthetic import generate_synthetic

    out = generate_synthetic(args.out, args.nodes, args.steps, args.seed, start=args.start, freq=args.freq)
    print(f"wrote {out}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Convert, inspect and build stgnn-launch data files.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser("convert", help="convert a .h5/.csv/.npy/.npz series into the native HDF5 layout")
    convert.add_argument("input", help="series file: .h5/.hdf5 (native or pandas), .csv, .npy, .npz")
    convert.add_argument("--out", required=True, help="native HDF5 file to write (.h5)")
    _series_options(convert)
    convert.set_defaults(run=_convert)

    inspect = commands.add_parser("inspect", help="print a series' shape, time range and missing share, "
                                                  "or a graph's size, edges and symmetry")
    inspect.add_argument("file", help="series file, or graph file (.pkl always; .csv/.npy with --graph)")
    inspect.add_argument("--graph", action="store_true", help="read a .csv or .npy file as a graph")
    _series_options(inspect)
    inspect.set_defaults(run=_inspect)

    graph = commands.add_parser("graph", help="build DCRNN's Gaussian-kernel graph from road distances")
    graph.add_argument("--distances", required=True, help="CSV of rows from,to,distance")
    graph.add_argument("--sensor-ids", required=True, help="sensor ids (.txt, .csv or DCRNN .pkl): the node order")
    graph.add_argument("--out", required=True, help="graph file to write (.npy or .pkl)")
    graph.add_argument("--threshold", type=float, default=0.1, help="weights below this become 0 (default 0.1)")
    graph.set_defaults(run=_graph)

    generate = commands.add_parser("generate", help="write a synthetic series with a graph (native HDF5)")
    generate.add_argument("--nodes", type=int, required=True)
    generate.add_argument("--steps", type=int, required=True)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--out", required=True, help="native HDF5 file to write (.h5)")
    _time_options(generate)
    generate.set_defaults(run=_generate)
    return parser


def _series_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", help="pandas HDF5 key (df, speed, ...) or .npz array name; default: the only one")
    parser.add_argument("--axis-order", default="TN", choices=tuple(AxisOrder), type=str.upper,
                        help="axes of an .npy/.npz array (T time, N sensors, F features; default TN)")
    _time_options(parser)


def _time_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", default=DEFAULT_START, help=f"first timestamp when the file has none "
                                                              f"(default {DEFAULT_START})")
    parser.add_argument("--freq", default=DEFAULT_FREQ, help=f"step when the file has none (default {DEFAULT_FREQ})")


if __name__ == "__main__":
    sys.exit(main())
