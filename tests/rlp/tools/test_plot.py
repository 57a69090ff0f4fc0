"""``rlp plot`` on metrics.jsonl files written here with known values (the format of rlp.run.metrics).

Checked against the input: every Axes' raw line holds exactly the logged finite values at their batches, the
smoothed line equals a trailing moving average computed here with numpy, each run keeps one colour, a metric a run
did not log draws nothing for it and a metric no run logged draws no Axes (a figure without any is not written);
the eval bar chart has one panel per metric common to all files with the files' values as bar heights. The PNGs on
disk are valid images of a non-trivial size. Bad inputs (no metrics.jsonl, an empty one, an unwritable --out,
--smooth 0, unreadable/foreign/incompatible --eval files) give one line naming the value, exit code 2 and no output.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from matplotlib.image import imread

from rlp.tools.plot import FIGURES, RAW_ALPHA, eval_figure, figures, load_evals, load_intervals, load_run
from tests.helpers.runs import run_cli

ALL = [m for metrics in FIGURES.values() for m in metrics]


def _values(metric: str, batch: int, run: int) -> float:
    return math.sin(0.3 * batch + len(metric) + run) + 0.05 * batch


def _write_run(folder, batches=30, drop=(), run=0, nan_at=None):
    """metrics.jsonl with every plotted metric but ``drop``; ``nan_at``=(metric, batch) is logged as "nan"."""
    folder.mkdir(parents=True)
    lines = []
    for b in range(batches):
        record = {'batch': b, 'throughput/batches_per_sec': 3.0}
        for metric in ALL:
            if metric not in drop:
                record[metric] = 'nan' if nan_at == (metric, b) else _values(metric, b, run)
        lines.append(json.dumps(record, sort_keys=True))
    (folder / 'metrics.jsonl').write_text('\n'.join(lines) + '\n')
    return folder


def _expected_average(values, window):
    values = np.asarray(values)
    return [values[max(0, i - window + 1) : i + 1].mean() for i in range(len(values))]


@pytest.fixture
def two_runs(tmp_path):
    a = _write_run(tmp_path / 'rlp', nan_at=('rlp/reward_mean', 7))
    b = _write_run(tmp_path / 'cpt', batches=20, run=1, drop=('loss/train/ntp', 'rlp/clip_fraction'))
    return a, b


def test_figure_data_is_the_logged_data(two_runs):
    """Both runs overlaid: per Axes (titled with its metric) and run, the raw line is the logged series (the "nan"
    point left out), the smoothed line the moving average over 4 of it, raw faint and in the run's colour; the
    metrics run 'cpt' did not log are drawn for 'rlp' only."""
    runs = [load_run(str(f)) for f in two_runs]
    figs = figures(runs, smooth=4)
    assert list(figs) == list(FIGURES)
    for name, fig in figs.items():
        axes = fig.get_axes()
        assert [ax.get_title() for ax in axes] == list(FIGURES[name])
        for ax in axes:
            metric = ax.get_title()
            lines = {line.get_label(): line for line in ax.get_lines()}
            expected_runs = ['rlp'] if metric in ('loss/train/ntp', 'rlp/clip_fraction') else ['rlp', 'cpt']
            assert sorted(lines) == sorted(expected_runs + [f'_raw {r}' for r in expected_runs]), metric
            for k, run_name in enumerate(['rlp', 'cpt']):
                if run_name not in expected_runs:
                    continue
                batches = range(30 if run_name == 'rlp' else 20)
                xs = [b for b in batches if not (run_name == 'rlp' and metric == 'rlp/reward_mean' and b == 7)]
                ys = [_values(metric, b, k) for b in xs]
                raw, smooth = lines[f'_raw {run_name}'], lines[run_name]
                assert list(raw.get_xdata()) == xs and list(smooth.get_xdata()) == xs
                assert list(raw.get_ydata()) == pytest.approx(ys, abs=1e-12)
                assert list(smooth.get_ydata()) == pytest.approx(_expected_average(ys, 4), abs=1e-12)
                assert raw.get_color() == smooth.get_color() == f'C{k}'
                assert raw.get_alpha() == RAW_ALPHA and smooth.get_alpha() is None
            legend = [t.get_text() for t in ax.get_legend().get_texts()]
            assert legend == expected_runs


def test_missing_metrics_drop_axes_and_figures(tmp_path):
    """A run that logged only loss/train/total and loss/train/rlp gives one figure with two Axes; smooth 1 draws
    the raw values as the smoothed line."""
    folder = _write_run(
        tmp_path / 'ntp', batches=5, drop=[m for m in ALL if m not in ('loss/train/total', 'loss/train/rlp')]
    )
    figs = figures([load_run(str(folder))], smooth=1)
    assert list(figs) == ['losses']
    axes = figs['losses'].get_axes()
    assert [ax.get_title() for ax in axes] == ['loss/train/total', 'loss/train/rlp']
    smooth = {line.get_label(): line for line in axes[0].get_lines()}['ntp']
    assert list(smooth.get_ydata()) == pytest.approx([_values('loss/train/total', b, 0) for b in range(5)])


def _write_eval(path, model, metrics, intervals=None):
    data = {'model': model, 'baseline': None, 'data': 'd', 'settings': {}, 'metrics': metrics}
    path.write_text(json.dumps({**data, **({'intervals': intervals} if intervals else {})}))
    return path


def test_eval_bars_are_the_common_metrics(tmp_path):
    """Two rlp eval --json files: one panel per metric present in both (in the first file's order), bar heights are
    the files' values, tick labels the "model" fields; a metric in one file only gets no panel."""
    e1 = _write_eval(tmp_path / 'a.json', 'hf/rlp', {'ntp_nll': 2.5, 'gain_vs_self': 0.25, 'only_here': 1.0})
    e2 = _write_eval(tmp_path / 'b.json', 'hf/base', {'gain_vs_self': -0.5, 'ntp_nll': 2.75})
    fig = eval_figure(load_evals([str(e1), str(e2)]))
    axes = [ax for ax in fig.get_axes() if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ['ntp_nll', 'gain_vs_self']
    for ax, want in zip(axes, ([2.5, 2.75], [0.25, -0.5])):
        assert [p.get_height() for p in ax.patches] == want
        assert [t.get_text() for t in ax.get_xticklabels()] == ['hf/rlp', 'hf/base']


def test_eval_error_bars_are_the_intervals(tmp_path):
    """A file with rlp eval's intervals gets an error bar from its low to its high bound on that metric's bar; a
    file without intervals gets none."""
    e1 = _write_eval(tmp_path / 'a.json', 'hf/rlp', {'acc_think': 0.5}, {'acc_think': [0.375, 0.625]})
    e2 = _write_eval(tmp_path / 'b.json', 'hf/base', {'acc_think': 0.25})
    paths = [str(e1), str(e2)]
    ax = next(ax for ax in eval_figure(load_evals(paths), load_intervals(paths)).get_axes() if ax.get_visible())
    segments = [seg for coll in ax.collections for seg in coll.get_segments()]
    assert len(segments) == 1
    assert [tuple(pt) for pt in segments[0]] == [(0.0, 0.375), (0.0, 0.625)]


def test_cli_writes_valid_pngs(two_runs, tmp_path, capsys):
    """The command prints the paths it wrote: the four run figures and eval.png, each a PNG that matplotlib reads
    back as an RGBA image of at least 300x500 pixels that is not blank."""
    e1 = _write_eval(tmp_path / 'a.json', 'hf/rlp', {'ntp_nll': 2.5})
    e2 = _write_eval(tmp_path / 'b.json', 'hf/base', {'ntp_nll': 2.75})
    out = tmp_path / 'plots'
    e1 = _write_eval(tmp_path / 'a.json', 'hf/rlp', {'ntp_nll': 2.5}, {'ntp_nll': [2.25, 2.75]})
    rc, stdout, err = run_cli(capsys, 'plot', *two_runs, '--out', out, '--smooth', 3, '--eval', e1, e2)
    assert rc == 0, err
    written = stdout.split()
    assert written == [str(out / f'{n}.png') for n in [*FIGURES, 'eval']]
    assert sorted(p.name for p in out.iterdir()) == sorted(f'{n}.png' for n in [*FIGURES, 'eval'])
    for path in written:
        image = imread(path)
        assert image.ndim == 3 and image.shape[0] >= 300 and image.shape[1] >= 500, (path, image.shape)
        assert image[..., :3].std() > 0.01


def test_bad_inputs(two_runs, tmp_path, capsys):
    """One line on stderr naming the value, exit code 2, nothing written, for each bad input."""
    good = two_runs[0]
    (tmp_path / 'no_metrics').mkdir()
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'metrics.jsonl').write_text('')
    (tmp_path / 'a_file').write_text('x')
    (tmp_path / 'bad.json').write_text('{"model": ')
    (tmp_path / 'foreign.json').write_text('[1, 2]')
    e1 = _write_eval(tmp_path / 'e1.json', 'a', {'x': 1.0})
    e2 = _write_eval(tmp_path / 'e2.json', 'b', {'y': 1.0})
    out = tmp_path / 'plots'
    cases = [
        ([tmp_path / 'no_metrics', '--out', out], 'has no metrics.jsonl'),
        ([tmp_path / 'empty', '--out', out], 'holds no metrics record'),
        ([tmp_path / 'missing', '--out', out], 'does not exist'),
        ([good, '--out', tmp_path / 'a_file'], 'is not a writable folder'),
        ([good, '--out', tmp_path / 'a_file' / 'sub'], 'is not a writable folder'),
        ([good, '--out', out, '--smooth', 0], '--smooth 0'),
        ([good, '--out', out, '--eval', tmp_path / 'bad.json'], 'is not valid JSON'),
        ([good, '--out', out, '--eval', tmp_path / 'foreign.json'], 'has no "metrics" mapping'),
        ([good, '--out', out, '--eval', tmp_path / 'nope.json'], 'cannot be read'),
        ([good, '--out', out, '--eval', e1, e2], 'share no numeric metric'),
    ]
    for argv, message in cases:
        rc, stdout, err = run_cli(capsys, 'plot', *argv)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith('rlp plot: ') and message in lines[0], (argv, err)
        named = [str(a) for a in argv if str(a) in lines[0]]
        assert named, (argv, lines[0])
        assert stdout == '' and not out.exists()
