"""The report's PNG plots, drawn with matplotlib's Agg canvas: no display, no pyplot global state.

One line (or bar colour) per study line (dataset/model/batching[variant]); error bars are the standard
deviation over seeds. A plot with nothing to show is not drawn, and the report says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from stgnn_launch.report.table import Group

BATCHING_COLORS = {"standard": "tab:red", "index": "tab:blue", "dist_index": "tab:green"}
SPLIT_PARTS = (("data_wait_s", "data wait", "tab:orange"), ("compute_s", "forward+backward", "tab:blue"),
               ("allreduce_s", "gradient all-reduce", "tab:purple"))
BYTE_UNITS = ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"), (1, "bytes"))


def draw_plots(groups: list[Group], baselines: dict[str, dict[str, Any]], out_dir: Path) -> dict[str, str | None]:
    """{file name: None if drawn, else why not}, for each of the five plots."""
    lines = _lines(groups)
    drawers = {
        "speedup.png": lambda: _speedup(lines, "speedup", "speedup (epoch time at fewest GPUs / this)", True),
        "efficiency.png": lambda: _speedup(lines, "efficiency", "parallel efficiency (speedup / GPU ratio)", False),
        "memory.png": lambda: _memory(lines),
        "time_split.png": lambda: _time_split(lines),
        "test_mae.png": lambda: _test_mae(lines, baselines),
    }
    outcome: dict[str, str | None] = {}
    for name, draw in drawers.items():
        figure = draw()
        if figure is None:
            outcome[name] = "no finished run has the numbers it needs"
            continue
        figure.tight_layout()
        FigureCanvasAgg(figure).print_png(str(out_dir / name))
        outcome[name] = None
    return outcome


def _lines(groups: list[Group]) -> dict[str, list[Group]]:
    """Study line label -> its groups with finished runs, by GPU count."""
    lines: dict[str, list[Group]] = {}
    for group in groups:
        if group.done and group.gpus is not None:
            dataset, model, batching, variant = group.line
            label = f"{dataset}/{model}/{batching}" + (f" [{variant}]" if variant else "")
            lines.setdefault(label, []).append(group)
    for members in lines.values():
        members.sort(key=lambda g: g.gpus)
    return lines


MARKERS = ("o", "s", "^", "D", "v", "P")


def _style(groups: list[Group], i: int) -> dict[str, Any]:
    """Colour by batching mode; marker and size by line, so that lines with equal values stay visible."""
    return {"color": _color(groups, i), "marker": MARKERS[i % len(MARKERS)], "markersize": max(4, 9 - 2 * i),
            "capsize": 3}


def _color(groups: list[Group], fallback: int) -> str:
    return BATCHING_COLORS.get(groups[0].line[2], f"C{fallback % 10}")


def _gpu_axis(ax, gpus: list[int]) -> None:
    gpus = sorted(set(gpus))
    if gpus and gpus[-1] / gpus[0] >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(gpus, [str(g) for g in gpus])
    ax.set_xlabel("GPUs (ranks)")
    ax.grid(True, alpha=0.3)


def _series(members: list[Group], column: str) -> tuple[list[int], list[float], list[float]]:
    xs, ys, errs = [], [], []
    for group in members:
        mean, std = group.stat(column)
        if mean is not None:
            xs.append(group.gpus)
            ys.append(mean)
            errs.append(std or 0.0)
    return xs, ys, errs


def _speedup(lines: dict[str, list[Group]], column: str, ylabel: str, ideal: bool) -> Figure | None:
    figure = Figure(figsize=(7, 4.5))
    ax = figure.add_subplot()
    all_gpus: list[int] = []
    bases: set[int] = set()
    for i, (label, members) in enumerate(lines.items()):
        xs, ys, errs = _series(members, column)
        if xs:
            ax.errorbar(xs, ys, yerr=errs, label=label, **_style(members, i))
            all_gpus += xs
            bases.add(xs[0])
    if not all_gpus:
        return None
    top = max(all_gpus)
    for base in sorted(bases):
        if ideal:
            ax.plot([base, top], [1.0, top / base], "k--", linewidth=1,
                    label="ideal" if len(bases) == 1 else f"ideal from {base}")
        else:
            ax.axhline(1.0, color="k", linestyle="--", linewidth=1, label="ideal")
            break
    _gpu_axis(ax, all_gpus)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return figure


def _bars(ax, lines: dict[str, list[Group]], column: str, ylabel: str) -> bool:
    """Grouped bars of a byte count: one cluster per GPU count, one bar per study line."""
    largest = max((g.stat(column)[0] or 0 for members in lines.values() for g in members), default=0)
    scale, unit = next((s, u) for s, u in BYTE_UNITS if largest >= s or s == 1)
    ax.set_ylabel(f"{ylabel} ({unit})")
    gpus = sorted({g.gpus for members in lines.values() for g in members})
    width = 0.8 / max(1, len(lines))
    drawn = False
    for i, (label, members) in enumerate(lines.items()):
        xs, ys, errs = _series(members, column)
        if xs:
            positions = [gpus.index(x) - 0.4 + width * (i + 0.5) for x in xs]
            ax.bar(positions, [y / scale for y in ys], width, yerr=[e / scale for e in errs], capsize=2,
                   label=label, color=_color(members, i))
            drawn = True
    ax.set_xticks(range(len(gpus)), [str(g) for g in gpus])
    ax.set_xlabel("GPUs (ranks)")
    ax.grid(True, axis="y", alpha=0.3)
    return drawn


def _memory(lines: dict[str, list[Group]]) -> Figure | None:
    """Host memory per rank and per node, and where the runs had GPUs, each rank's device peak beside them."""
    device = _has(lines, "device_peak_bytes_per_rank")
    panels = 3 if device else 2
    figure = Figure(figsize=(5.5 * panels, 4.5))
    per_rank, per_node = figure.add_subplot(1, panels, 1), figure.add_subplot(1, panels, 2)
    if device:
        gpu = figure.add_subplot(1, panels, 3)
        _bars(gpu, lines, "device_peak_bytes_per_rank", "GPU peak allocated per rank")
        gpu.set_title("device memory per rank")
    drawn = _bars(per_rank, lines, "peak_rss_bytes_per_rank", "peak RSS per rank")
    per_rank.set_title("peak memory by batching mode")
    # Per node: the measured peak where the runs report it, else the data the node holds.
    node_column = "peak_rss_bytes_per_node" if _has(lines, "peak_rss_bytes_per_node") else "data_bytes_per_node"
    node_label = "peak RSS per node" if node_column == "peak_rss_bytes_per_node" else "data held per node"
    drawn = _bars(per_node, lines, node_column, node_label) or drawn
    per_node.set_title("per node")
    if not drawn:
        return None
    per_rank.legend(fontsize=8)
    return figure


def _has(lines: dict[str, list[Group]], column: str) -> bool:
    return any(g.stat(column)[0] is not None for members in lines.values() for g in members)


def _time_split(lines: dict[str, list[Group]]) -> Figure | None:
    """Stacked bars per (line, GPUs): the measured parts of an epoch, the rest of it, then evaluation.
    Runs without the split show their whole training epoch as one part."""
    bars = [(label, g) for label, members in lines.items() for g in members if g.stat("epoch_time_s")[0]]
    if not bars:
        return None
    figure = Figure(figsize=(max(6.0, 0.6 * len(bars) + 2), 4.8))
    ax = figure.add_subplot()
    seen: set[str] = set()
    for x, (label, group) in enumerate(bars):
        epoch = group.stat("epoch_time_s")[0] or 0.0
        values = {key: group.stat(key)[0] for key, _, _ in SPLIT_PARTS}
        wait, compute, allreduce = values["data_wait_s"], values["compute_s"], values["allreduce_s"]
        if None not in (compute, allreduce) and (wait or 0) + compute + allreduce > 1.02 * epoch >= compute:
            values["compute_s"] = compute - allreduce  # DDP's all-reduce runs inside the backward pass
        parts = [(name, color, values[key]) for key, name, color in SPLIT_PARTS]
        measured = [(name, color, value) for name, color, value in parts if value is not None]
        if measured:
            rest = max(0.0, epoch - sum(v for _, _, v in measured))
            stack = [*measured, ("rest of the epoch", "tab:gray", rest)]
        else:
            stack = [("training epoch (not split)", "silver", epoch)]
        eval_s = group.stat("eval_s")[0]
        if eval_s is not None:
            stack.append(("evaluation", "tab:olive", eval_s))
        bottom = 0.0
        for name, color, value in stack:
            ax.bar(x, value, 0.7, bottom=bottom, color=color, label=None if name in seen else name)
            seen.add(name)
            bottom += value
    ax.set_xticks(range(len(bars)), [f"{label.split('/')[-1]}\n{g.gpus}" for label, g in bars], fontsize=7)
    ax.set_xlabel("batching, GPUs")
    ax.set_ylabel("seconds per epoch (median)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return figure


def _test_mae(lines: dict[str, list[Group]], baselines: dict[str, dict[str, Any]]) -> Figure | None:
    figure = Figure(figsize=(7, 4.5))
    ax = figure.add_subplot()
    all_gpus: list[int] = []
    for i, (label, members) in enumerate(lines.items()):
        xs, ys, errs = _series(members, "test_mae_avg")
        if xs:
            ax.errorbar(xs, ys, yerr=errs, label=label, **_style(members, i))
            all_gpus += xs
    if not all_gpus:
        return None
    styles = iter([":", "-.", (0, (5, 5)), (0, (1, 3))] * 4)
    for dataset, by_name in baselines.items():
        for name, metrics in by_name.items():
            mae = (metrics.get("avg") or {}).get("mae")
            if isinstance(mae, (int, float)):
                ax.axhline(mae, color="k", linestyle=next(styles), linewidth=1,
                           label=f"{name}" + (f" ({dataset})" if len(baselines) > 1 else ""))
    _gpu_axis(ax, all_gpus)
    ax.set_ylabel("test MAE, average over the horizon")
    ax.legend(fontsize=8)
    return figure
