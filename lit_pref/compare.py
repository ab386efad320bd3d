"""``python -m lit_pref compare RUN_DIR [RUN_DIR ...]``: the evaluation metrics of several runs side by side.

Reads the TensorBoard event files of each run and

- prints a Markdown table with the final and the best value of every scalar whose tag starts with one of
  ``--tag_prefixes`` (default ``eval/`` and ``val/``; ``--tag_prefixes+ eval/`` adds one, ``--tag_prefixes [eval/]``
  sets the list), and the step of each; one row a (metric, run), ``–`` where
  a run did not log the metric;
- writes a PNG (``--out``, default ``comparison.png``) with one panel a metric and one line a run.

A metric ``X`` logged with ``X_low`` and ``X_high`` (the win-rate intervals of ``lit_pref.callbacks.WinRate``) is one
metric with an interval: ``value [low, high]`` in the table, a shaded band around X's line in the figure.

Rules:

- A RUN_DIR holding event files is one run (all its ``events.out.tfevents.*`` read in order, so a resumed run
  is one curve); otherwise every folder below it that holds event files is a run (a parent of ``version_N``
  folders, or a whole ``runs/``). A run is named by its path relative to the common parent of all runs; a
  single run by its folder as given (``runs/demo/version_0``), so the figure says which run it shows.
- Win-rate panels (a tag containing ``win_rate``) draw the 50% line: above it the policy beats what it is
  compared with.
- "final" is the value at the largest step; a step logged twice (a resumed run) keeps the later value.
- "best" is the maximum, except for tags whose last part contains ``loss``, ``mse`` or ``error``, where it is
  the minimum; its step is the first step that reached it. NaN values are never best.
- ``val/*`` is included by default: pair methods log ``val/loss`` and ``val/implicit_acc`` there. Their values
  compare only between runs of methods with the same loss; ``eval/*`` (same scorers, prompts and seeds) compare
  across methods.

The figure is drawn with PIL: panels of ``PANEL_SIZE`` pixels, ``COLUMNS`` to a row, then a legend strip of
``LEGEND_PAD + LEGEND_LINE * runs`` pixels under them.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_pref.commands import function_parser
from lit_pref.io import atomic_file

PANEL_SIZE = (420, 300)
COLUMNS = 3
LEGEND_PAD = 12
LEGEND_LINE = 18
MISSING = "–"
LOWER_IS_BETTER = ("loss", "mse", "error")
# matplotlib's "tab10" colours
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]

Series = list[tuple[int, float]]  # (step, value), steps increasing


@dataclass
class Run:
    """One run: its name, folder and the logged series of the selected scalars (tag -> series)."""

    name: str
    path: Path
    scalars: dict[str, Series] = field(default_factory=dict)


def find_run_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """The run folders of ``run_dir``: itself if it holds event files, else every folder below it that does.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist, or neither it nor any folder below holds an event file.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such folder")
    if any(root.glob("events.out.tfevents.*")):
        return [root]
    found = sorted({f.parent for f in root.rglob("events.out.tfevents.*")})
    if not found:
        raise FileNotFoundError(f"{run_dir}: no TensorBoard event file (events.out.tfevents.*) in it or below it")
    return found


def read_scalars(run_dir: Path, prefixes: Sequence[str]) -> dict[str, Series]:
    """Tag -> (step, value) series of every scalar of ``run_dir``'s event files whose tag starts with a prefix."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    out = {}
    for tag in accumulator.Tags()["scalars"]:
        if tag.startswith(tuple(prefixes)):
            by_step = {e.step: e.value for e in accumulator.Scalars(tag)}  # a step written twice: the later value
            out[tag] = sorted(by_step.items())
    return out


def load_runs(run_dirs: Sequence[str | os.PathLike], prefixes: Sequence[str] = ("eval/", "val/")) -> list[Run]:
    """Every run under ``run_dirs`` (see :func:`find_run_dirs`), named by its path relative to their common parent.

    Raises:
        FileNotFoundError: a RUN_DIR holds no event file (the message names it).
        ValueError: no run logged a scalar with one of ``prefixes``.
    """
    dirs = list(dict.fromkeys(d.resolve() for run_dir in run_dirs for d in find_run_dirs(run_dir)))
    common = Path(os.path.commonpath(dirs))
    if len(dirs) == 1:
        names = [shown_path(dirs[0])]
    else:
        names = [d.relative_to(common).as_posix() for d in dirs]
    runs = [Run(name, d, read_scalars(d, prefixes)) for name, d in zip(names, dirs)]
    if not any(run.scalars for run in runs):
        raise ValueError(f"no scalar tagged {' or '.join(p + '*' for p in prefixes)} in any run: "
                         f"{', '.join(str(run.path) for run in runs)}")
    return runs


def shown_path(path: Path) -> str:
    """``path`` relative to the working folder when it lies below it, else absolute."""
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def is_win_rate(tag: str) -> bool:
    """Win-rate panels get the 50% line."""
    return "win_rate" in tag


def lower_is_better(tag: str) -> bool:
    """True for losses: the tag's last part contains ``loss``, ``mse`` or ``error``."""
    last = tag.rsplit("/", 1)[-1].lower()
    return any(word in last for word in LOWER_IS_BETTER)


def final_and_best(series: Series, minimize: bool) -> tuple[tuple[int, float], tuple[int, float] | None]:
    """``((step, final value), (step, best value))``; best is ``None`` when every value is NaN."""
    values = [(step, value) for step, value in series if not math.isnan(value)]
    if not values:
        return series[-1], None
    pick = min if minimize else max
    target = pick(value for _, value in values)
    return series[-1], next((step, value) for step, value in values if value == target)


def metric_order(runs: Sequence[Run], prefixes: Sequence[str]) -> list[str]:
    """Every tag of any run, grouped by prefix in the order given, sorted by name within a prefix."""
    tags = {tag for run in runs for tag in run.scalars}
    return sorted(tags, key=lambda t: (next(i for i, p in enumerate(prefixes) if t.startswith(p)), t))


def markdown_table(runs: Sequence[Run], prefixes: Sequence[str]) -> str:
    """The Markdown table: one row a (metric, run) with the final and best value and the step of each; a metric
    with an interval (see :func:`panels`) shows it as ``value [low, high]`` from the same step."""
    lines = ["| metric | run | final | step | best | step | best is |", "|---|---|---:|---:|---:|---:|---|"]
    for tag, band in panels(runs, prefixes):
        minimize = lower_is_better(tag)
        for run in runs:
            cells = [MISSING] * 4
            if tag in run.scalars:
                interval = {side: dict(run.scalars.get(f"{band}_{side}", [])) for side in ("low", "high")}

                def cell(step: int, value: float) -> str:
                    if step in interval["low"] and step in interval["high"]:
                        return f"{value:.4g} [{interval['low'][step]:.4g}, {interval['high'][step]:.4g}]"
                    return f"{value:.4g}"

                (final_step, final), best = final_and_best(run.scalars[tag], minimize)
                cells[:2] = [cell(final_step, final), str(final_step)]
                if best is not None:
                    cells[2:] = [cell(*best), str(best[0])]
            lines.append(f"| {tag} | {run.name} | {' | '.join(cells)} | {'min' if minimize else 'max'} |")
    return "\n".join(lines)


def panels(runs: Sequence[Run], prefixes: Sequence[str]) -> list[tuple[str, str | None]]:
    """``(tag, band)`` per panel: ``band`` is the tag stem of an ``_low``/``_high`` pair drawn around ``tag``."""
    tags = metric_order(runs, prefixes)
    banded = {t for t in tags if f"{t}_low" in tags and f"{t}_high" in tags}
    folded = {f"{t}_{side}" for t in banded for side in ("low", "high")}
    return [(t, t if t in banded else None) for t in tags if t not in folded]


def figure_size(num_panels: int, num_runs: int) -> tuple[int, int]:
    """Pixel size ``(width, height)`` of the figure."""
    columns, rows = min(num_panels, COLUMNS), math.ceil(num_panels / COLUMNS)
    return columns * PANEL_SIZE[0], rows * PANEL_SIZE[1] + LEGEND_PAD + LEGEND_LINE * num_runs


def nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> tuple[list[float], int]:
    """About ``count`` round tick values (1, 2 or 5 times a power of ten apart) in ``[low, high]`` and the number
    of decimals that writes them; ``integer``: at least 1 apart (steps)."""
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    step = max(step, 1) if integer else step
    first = math.ceil(low / step - 1e-9)
    ticks = [k * step for k in range(first, math.floor(high / step + 1e-9) + 1)]
    return ticks, max(0, -math.floor(math.log10(step) + 1e-9))


def _padded(low: float, high: float) -> tuple[float, float]:
    if high > low:
        pad = 0.05 * (high - low)
        return low - pad, high + pad
    half = 0.5 if low == 0 else 0.05 * abs(low)
    return low - half, high + half


def _fit(text: str, font: ImageFont.ImageFont, width: float) -> str:
    """``text``, or its end after an ellipsis, fitting ``width`` pixels (the end of a tag or a path tells most)."""
    if font.getlength(text) <= width:
        return text
    while len(text) > 1 and font.getlength("…" + text) > width:
        text = text[1:]
    return "…" + text


def draw_panel(image: Image.Image, box: tuple[int, int], tag: str, band: str | None, runs: Sequence[Run],
               font: ImageFont.ImageFont) -> None:
    """One metric's panel at ``box`` (top-left corner): title, axes with ticks, a line per run (+ band)."""
    x0, y0 = box
    width, height = PANEL_SIZE
    left, right, top, bottom = x0 + 62, x0 + width - 14, y0 + 28, y0 + height - 42
    draw = ImageDraw.Draw(image)
    draw.text(((left + right) / 2, y0 + 8), _fit(tag, font, width - 20), fill="black", font=font, anchor="mt")

    curves = [(i, run.scalars[tag]) for i, run in enumerate(runs) if tag in run.scalars]
    bands = {i: (runs[i].scalars.get(f"{band}_low", []), runs[i].scalars.get(f"{band}_high", [])) for i, _ in curves
             } if band else {}
    steps = [s for _, series in curves for s, _ in series]
    values = [v for _, series in curves for _, v in series] + [v for lo, hi in bands.values() for _, v in lo + hi]
    values = [v for v in values if math.isfinite(v)] or [0.0]
    if is_win_rate(tag):
        values.append(0.5)  # the 50% line always in view
    (sx0, sx1), (vy0, vy1) = _padded(min(steps), max(steps)), _padded(min(values), max(values))

    def to_xy(step: float, value: float) -> tuple[float, float]:
        return (left + (step - sx0) / (sx1 - sx0) * (right - left), bottom - (value - vy0) / (vy1 - vy0) * (bottom - top))

    ticks, decimals = nice_ticks(vy0, vy1)
    for t in ticks:
        y = to_xy(sx0, t)[1]
        draw.line([(left, y), (right, y)], fill=(228, 228, 228))
        draw.text((left - 5, y), f"{t:.{decimals}f}", fill="black", font=font, anchor="rm")
    ticks, decimals = nice_ticks(sx0, sx1, integer=True)
    for t in ticks:
        x = to_xy(t, vy0)[0]
        draw.line([(x, top), (x, bottom)], fill=(228, 228, 228))
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        draw.text((x, bottom + 6), f"{t:.{decimals}f}", fill="black", font=font, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline="black")
    if is_win_rate(tag):  # dashed line at 50%
        y = to_xy(sx0, 0.5)[1]
        for x in range(left, right, 8):
            draw.line([(x, y), (min(x + 4, right), y)], fill=(90, 90, 90), width=1)
        draw.text((right - 3, y - 2), "50%", fill=(90, 90, 90), font=font, anchor="rb")
    draw.text(((left + right) / 2, y0 + height - 6), "step", fill="black", font=font, anchor="mb")

    for i, (low, high) in bands.items():  # one overlay a band, so that overlapping bands blend
        if low and high:
            overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
            outline = [to_xy(s, v) for s, v in high] + [to_xy(s, v) for s, v in reversed(low)]
            ImageDraw.Draw(overlay).polygon(outline, fill=(*PALETTE[i % len(PALETTE)], 60))
            image.alpha_composite(overlay)
    for i, series in curves:
        colour = PALETTE[i % len(PALETTE)]
        points = [to_xy(s, v) for s, v in series if math.isfinite(v)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2, joint="curve")
        if len(points) <= 60:
            for x, y in points:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)


def draw_figure(runs: Sequence[Run], prefixes: Sequence[str]) -> Image.Image:
    """The RGB figure: a panel per metric (see :func:`panels`), ``COLUMNS`` to a row, the legend below."""
    layout = panels(runs, prefixes)
    width, height = figure_size(len(layout), len(runs))
    image = Image.new("RGBA", (width, height), "white")
    font = ImageFont.load_default(size=12)
    for k, (tag, band) in enumerate(layout):
        draw_panel(image, ((k % COLUMNS) * PANEL_SIZE[0], (k // COLUMNS) * PANEL_SIZE[1]), tag, band, runs, font)
    draw = ImageDraw.Draw(image)
    top = math.ceil(len(layout) / COLUMNS) * PANEL_SIZE[1] + LEGEND_PAD // 2
    for i, run in enumerate(runs):
        y = top + i * LEGEND_LINE + LEGEND_LINE / 2
        draw.line([(20, y), (50, y)], fill=PALETTE[i % len(PALETTE)], width=3)
        draw.text((58, y), _fit(run.name, font, width - 70), fill="black", font=font, anchor="lm")
    return image.convert("RGB")


def compare(run_dirs: list[str], out: str = "comparison.png", tag_prefixes: list[str] | None = None) -> None:
    """Prints the Markdown table of ``run_dirs`` and writes the figure to ``out``.

    Args:
        run_dirs: A run's folder (holding events.out.tfevents.*) or a folder with runs below it; several.
        out: PNG with the curves.
        tag_prefixes: Compare scalars whose tag starts with one of these (None: eval/ and val/).
    """
    prefixes = tag_prefixes or ["eval/", "val/"]
    runs = load_runs(run_dirs, prefixes)
    print(markdown_table(runs, prefixes))
    figure = draw_figure(runs, prefixes)
    with atomic_file(out) as tmp:
        figure.save(tmp, format="PNG")
    print(f"wrote {out} ({len(panels(runs, prefixes))} panels, {len(runs)} runs)", file=sys.stderr)


def main(argv: list[str]) -> None:
    """``compare RUN_DIR [RUN_DIR ...] [--out comparison.png] [--tag_prefixes+ eval/]``: :func:`compare`."""
    parser = function_parser(compare, "compare", __doc__.split("\n\n")[0], skip={"run_dirs"})
    parser.add_argument("run_dirs", type=str, nargs="+", metavar="RUN_DIR",
                        help="A run's folder (holding events.out.tfevents.*) or a folder with runs below it.")
    config = parser.parse_args(argv)
    try:
        compare(config.run_dirs, config.out, config.tag_prefixes)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"lit_pref compare: {error}") from None
