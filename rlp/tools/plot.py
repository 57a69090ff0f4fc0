"""``rlp plot``: PNG figures of one or more runs' ``metrics.jsonl``, and of ``rlp eval --json`` results.

Figures (one Axes per metric; every run overlaid in it, legend = run folder name; the moving average over
``--smooth`` batches drawn over the raw values, which are drawn faint behind):

- ``losses.png``: ``loss/train/total``, ``loss/train/ntp``, ``loss/train/rlp``;
- ``reward.png``: ``rlp/reward_mean``, ``rlp/gain_vs_ema``, ``rlp/gain_vs_current`` (read the two gains together:
  only the gain against the EMA teacher shows a policy damaging its own no-think prediction);
- ``thoughts.png``: ``rlp/thought_len_mean``, ``rlp/truncation_rate``;
- ``clip.png``: ``rlp/clip_fraction``;
- ``eval.png`` (with ``--eval``): one panel per metric common to all the JSON files, one bar per file, with the
  file's 95% interval (``rlp eval``'s ``intervals``) drawn as an error bar where it has one.

A metric a run did not log is skipped for that run, a metric no run logged gets no Axes, and a figure without any
Axes is not written. Non-finite values (written as ``"nan"``/``"inf"`` strings) are left out of the lines. The
moving average at batch i is the mean of the last ``--smooth`` finite values up to i (fewer at the start).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Optional

from rlp.tools.cli import CliError

__all__ = [
    'FIGURES',
    'Run',
    'add_parser',
    'eval_figure',
    'figures',
    'load_evals',
    'load_intervals',
    'load_run',
    'moving_average',
    'run',
]

# matplotlib and the metrics reader (which loads Composer) are imported inside the functions that use them:
# ``rlp --help`` imports every subcommand module to build its parser, and should not wait for them.

FIGURES: dict[str, tuple[str, ...]] = {
    'losses': ('loss/train/total', 'loss/train/ntp', 'loss/train/rlp'),
    'reward': ('rlp/reward_mean', 'rlp/gain_vs_ema', 'rlp/gain_vs_current'),
    'thoughts': ('rlp/thought_len_mean', 'rlp/truncation_rate'),
    'clip': ('rlp/clip_fraction',),
}
RAW_ALPHA = 0.25


@dataclass
class Run:
    """One run: its legend name and its records by batch (``rlp.run.metrics.read_metrics``)."""

    name: str
    records: dict[int, dict[str, Any]]

    def series(self, metric: str) -> tuple[list[int], list[float]]:
        """(batches, values) of ``metric``, in batch order, finite values only."""
        xs, ys = [], []
        for batch in sorted(self.records):
            value = _number(self.records[batch].get(metric))
            if value is not None and math.isfinite(value):
                xs.append(batch)
                ys.append(value)
        return xs, ys


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over ``window`` values (the first ones average what there is so far)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def load_run(folder: str, name: Optional[str] = None) -> Run:
    """The run in ``folder`` (its ``metrics.jsonl``); raises :class:`CliError` when there is none or it is empty."""
    from rlp.run.metrics import read_metrics

    path = os.path.join(folder, 'metrics.jsonl')
    if not os.path.isdir(folder):
        raise CliError(f'RUN_DIR {folder!r} does not exist; give a run folder (trainer.output_dir of a run)')
    if not os.path.isfile(path):
        raise CliError(f'RUN_DIR {folder!r} has no metrics.jsonl; give a run folder (trainer.output_dir of a run)')
    try:
        records = read_metrics(path)
    except (KeyError, TypeError, ValueError) as err:
        raise CliError(
            f'{path!r} holds a record without an integer "batch" ({err}); it is not a metrics.jsonl'
        ) from err
    if not records:
        raise CliError(f'{path!r} holds no metrics record; plot a run that trained at least one batch')
    return Run(name or os.path.basename(os.path.normpath(folder)) or folder, records)


def _names(folders: list[str]) -> list[str]:
    """Legend names: the folder names, with parent folders added while two runs would share a name."""
    parts = [os.path.normpath(os.path.abspath(f)).split(os.sep) for f in folders]
    depth = 1
    while depth < max(len(p) for p in parts):
        names = ['/'.join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
        depth += 1
    return ['/'.join(p) for p in parts]


def _figure(figsize: tuple[float, float]) -> Any:
    """A Figure on the Agg canvas (no pyplot, no global state, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout='constrained')
    FigureCanvasAgg(fig)
    return fig


def figures(runs: list[Run], smooth: int = 10) -> dict[str, Any]:
    """``{figure name: matplotlib Figure}`` for ``runs``; each Axes is titled with its metric and holds, per run
    that logged it, a faint raw line (label ``_raw <run>``) and the smoothed line (label ``<run>``)."""
    out = {}
    for fig_name, metrics in FIGURES.items():
        panels = [(m, [(i, r, *r.series(m)) for i, r in enumerate(runs)]) for m in metrics]
        panels = [(m, [s for s in series if s[2]]) for m, series in panels]
        panels = [(m, series) for m, series in panels if series]
        if not panels:
            continue
        fig = _figure(figsize=(6.4 * len(panels), 4.2))
        for ax, (metric, series) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
            for i, run, xs, ys in series:
                color = f'C{i % 10}'
                ax.plot(xs, ys, color=color, alpha=RAW_ALPHA, linewidth=0.8, label=f'_raw {run.name}')
                ax.plot(xs, moving_average(ys, smooth), color=color, linewidth=1.8, label=run.name)
            ax.set_title(metric)
            ax.set_xlabel('batch')
            ax.grid(alpha=0.3)
            ax.legend(fontsize='small')
        fig.suptitle(f'{fig_name} (moving average over {smooth} batches; raw values faint)')
        out[fig_name] = fig
    return out


def load_evals(paths: list[str]) -> list[tuple[str, dict[str, float]]]:
    """``(label, {metric: value})`` of each ``rlp eval --json`` file (``{"model": ..., "metrics": {...}}``; nested
    mappings are flattened to ``a/b``); the label is the ``model`` field, or the file name when labels repeat."""
    out = []
    for path in paths:
        try:
            with open(path, encoding='utf-8') as fh:
                data = json.load(fh)
        except OSError as err:
            raise CliError(
                f'--eval {path!r} cannot be read ({err.strerror}); give a file written by rlp eval --json'
            ) from err
        except ValueError as err:
            raise CliError(
                f'--eval {path!r} is not valid JSON ({err}); give a file written by rlp eval --json'
            ) from err
        metrics = data.get('metrics') if isinstance(data, dict) else None
        if not isinstance(metrics, dict):
            raise CliError(f'--eval {path!r} has no "metrics" mapping; give a file written by rlp eval --json')
        flat: dict[str, float] = {}
        _flatten(metrics, '', flat)
        out.append((str(data.get('model') or os.path.basename(path)), flat))
    labels = [label for label, _ in out]
    if len(set(labels)) < len(labels):
        out = [(os.path.basename(p), m) for p, (_, m) in zip(paths, out)]
    return out


def _flatten(mapping: dict, prefix: str, out: dict[str, float]) -> None:
    for key, value in mapping.items():
        if isinstance(value, dict):
            _flatten(value, f'{prefix}{key}/', out)
        elif (number := _number(value)) is not None and math.isfinite(number):
            out[f'{prefix}{key}'] = number


def load_intervals(paths: list[str]) -> list[dict[str, list[float]]]:
    """``{metric: [low, high]}`` of each ``rlp eval --json`` file (empty for a file without intervals)."""
    out = []
    for path in paths:
        with open(path, encoding='utf-8') as fh:
            data = json.load(fh)
        found = data.get('intervals') if isinstance(data, dict) else None
        out.append({k: v for k, v in (found or {}).items() if isinstance(v, list) and len(v) == 2})
    return out


def eval_figure(
    evals: list[tuple[str, dict[str, float]]], intervals: Optional[list[dict[str, list[float]]]] = None
) -> Any:
    """A grid with one panel per metric common to all ``evals`` (first file's order), one bar per file; a bar
    whose file has an interval for the metric (``intervals``, in the order of ``evals``) gets it as an error bar."""
    common = [k for k in evals[0][1] if all(k in m for _, m in evals[1:])]
    if not common:
        names = ', '.join(label for label, _ in evals)
        raise CliError(f'the --eval files ({names}) share no numeric metric; compare files written by rlp eval --json')
    cols = min(4, len(common))
    rows = math.ceil(len(common) / cols)
    fig = _figure(figsize=(max(6.4, 3.2 * cols + 0.6 * len(evals)), max(3.6, 2.8 * rows)))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    labels = [label for label, _ in evals]
    for ax, metric in zip(axes, common):
        ax.bar(range(len(evals)), [m[metric] for _, m in evals], color=[f'C{i % 10}' for i in range(len(evals))])
        for i, (_, m) in enumerate(evals):
            ci = (intervals or [{}] * len(evals))[i].get(metric)
            if ci is not None:
                low, high = max(m[metric] - ci[0], 0.0), max(ci[1] - m[metric], 0.0)
                ax.errorbar([i], [m[metric]], yerr=[[low], [high]], color='black', capsize=4, linewidth=1.2)
        ax.set_title(metric, fontsize='small')
        ax.set_xticks(range(len(evals)), labels, rotation=20, ha='right', fontsize='x-small')
        ax.grid(axis='y', alpha=0.3)
    for ax in axes[len(common) :]:
        ax.set_visible(False)
    fig.suptitle('rlp eval: ' + ' vs '.join(labels))
    return fig


def write_figures(figs: dict[str, Any], out: str) -> list[str]:
    """Save each figure as ``<out>/<name>.png`` (written to a temporary name, then renamed); returns the paths."""
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, '.rlp-plot-probe')
        open(probe, 'w').close()
        os.remove(probe)
    except OSError as err:
        raise CliError(f'--out {out!r} is not a writable folder ({err.strerror}); choose another folder') from err
    paths = []
    for name, fig in figs.items():
        path = os.path.join(out, f'{name}.png')
        tmp = os.path.join(out, f'.{name}.png.tmp')
        fig.savefig(tmp, format='png', dpi=110)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        'plot',
        help='PNG figures of runs (losses, reward and gains, thought length, clipping) and of rlp eval results',
        description=__doc__.split('\n\n')[0].replace('``', ''),
        epilog='example: rlp plot runs/rlp runs/cpt --out plots/ --eval eval-rlp.json eval-cpt.json',
    )
    p.add_argument('runs', nargs='+', metavar='RUN_DIR', help='run folders holding metrics.jsonl')
    p.add_argument('--out', required=True, metavar='DIR', help='folder for the PNG files')
    p.add_argument('--smooth', type=int, default=10, metavar='N', help='moving-average window (default: %(default)s)')
    p.add_argument('--eval', nargs='+', default=[], metavar='EVAL_JSON', help='files written by rlp eval --json')


def run(args: Any) -> int:
    if args.smooth < 1:
        raise CliError(f'--smooth {args.smooth}: the moving-average window must be >= 1 (1 = no smoothing)')
    runs = [load_run(folder, name) for folder, name in zip(args.runs, _names(args.runs))]
    evals = load_evals(args.eval) if args.eval else []
    figs = figures(runs, args.smooth)
    if evals:
        figs['eval'] = eval_figure(evals, load_intervals(args.eval))
    if not figs:
        wanted = ', '.join(m for v in FIGURES.values() for m in v)
        raise CliError(f'none of {", ".join(args.runs)} logged any plotted metric ({wanted}); nothing to draw')
    for path in write_figures(figs, args.out):
        print(path)
    return 0
