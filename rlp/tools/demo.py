"""``make demo``: RLP, RLP + next-token loss and FLOP-matched continued pretraining from one base, on the same
documents, compared with 95% intervals — on CPU, nothing downloaded.

Steps, each printed as the command a user would type (everything is written under ``demo/``):

1. plain documents of the bundled synthetic corpus (``python -m pipeline.synthetic``, no inline thoughts): one
   seed for training, another held out for the evaluation; tokenised into MDS shards (``rlp-data prepare``);
2. three arms from the same base (the model shipped in ``rlp/assets/demo-base``, built by ``make demo-base``),
   reading the same documents in the same order: RLP at answer positions (``recipes/demo-rlp.yaml``), RLP + next-token
   loss (``recipes/demo-rlp-ntp.yaml``), and continued pretraining with next-token loss only (CPT,
   ``recipes/demo-cpt.yaml``) for as many batches as the RLP run's counted FLOPs buy (``throughput/flops_total``);
3. the runs exported to Hugging Face folders (``rlp export``) and evaluated with the base on the held-out
   documents at the answer positions (``rlp eval --after = --after ' make '``), all at the same positions with the
   same thought draws, so differences are paired;
   The arms run side by side (at most ``--jobs`` commands at once, cores shared out between them:
   :mod:`rlp.tools.jobs`); CPT starts when the RLP run has finished and its FLOPs are known. Each command's output
   goes to ``demo/logs/``; the console shows each arm's newest progress line every 30 s;
4. the table (every metric with its 95% bootstrap interval, the FLOPs and wall time of each arm), the paired
   differences against CPT and the base, and a verdict computed from the intervals: a difference is claimed only
   where its interval excludes 0.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from rlp.tools.jobs import JobFailed, Lanes

__all__ = ['ARMS', 'ROWS', 'compare', 'main', 'matched_batches', 'table', 'verdict']

ROOT = Path(__file__).resolve().parents[2]
BASE_MODEL = 'rlp/assets/demo-base'
ANSWERS = ['--after', '=', '--after', ' make ']
THOUGHTS = ['--group-size', '8', '--max-thought-tokens', '32', '--temperature', '0.7']  # as in demo-rlp.yaml
ARMS = {'rlp': 'demo-rlp', 'rlp+ntp': 'demo-rlp-ntp', 'cpt': 'demo-cpt'}
ROWS = ('nll_nothink', 'acc_nothink', 'acc_think', 'gain_vs_baseline', 'gain_vs_self', 'nll_think_mix',
        'best_of_g_helps', 'thought_len_mean', 'truncation_rate')  # fmt: skip
# the metrics the verdict reads, and which direction is better
VERDICT = {'acc_think': 'higher', 'gain_vs_baseline': 'higher', 'nll_nothink': 'lower'}


def _run(cmd: list[str]) -> float:
    print(f'\n$ {shlex.join(cmd)}', flush=True)
    started = time.monotonic()
    code = subprocess.call(cmd, cwd=ROOT)
    if code != 0:
        print(f'demo: step failed with exit code {code}: {shlex.join(cmd)}', file=sys.stderr)
        raise SystemExit(code)
    took = time.monotonic() - started
    print(f'[{took:.0f}s]', flush=True)
    return took


def matched_batches(target_flops: float, flops_per_batch: float) -> int:
    """The whole batches of ``flops_per_batch`` nearest to ``target_flops`` (at least 1)."""
    if flops_per_batch <= 0:
        raise ValueError(f'flops_per_batch must be > 0, got {flops_per_batch}')
    return max(1, round(target_flops / flops_per_batch))


def cpt_flops_per_batch(base_model: str, rows: int, seq_len: int) -> float:
    """Next-token FLOPs of one CPT batch of ``rows`` full rows of ``seq_len`` tokens (:func:`rlp.flops.ntp_flops`)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlp.flops import FlopModel, ntp_flops

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(ROOT / base_model)))
    return ntp_flops(FlopModel.of(model), [seq_len] * rows)


def last_record(run: Path) -> dict[str, Any]:
    """The last line of a run's ``metrics.jsonl``."""
    lines = (run / 'metrics.jsonl').read_text().splitlines()
    return json.loads(lines[-1])


def run_lr(run: Path) -> float:
    """The learning rate a run trained with (``trainer.optimizer.lr`` of its ``resolved_config.yaml``)."""
    return float(yaml.safe_load((run / 'resolved_config.yaml').read_text())['trainer']['optimizer']['lr'])


def compare(a: dict, b: dict, metric: str) -> tuple[float, float, float]:
    """``(a - b, low, high)`` for ``metric``: the paired difference of two ``rlp eval --json`` results at the same
    positions and its 95% interval (:func:`rlp.tools.evaluate.paired`)."""
    from rlp.tools.evaluate import paired

    d = paired(a, b)
    return d['metrics'][metric], *d['intervals'][metric]


def thinking_helps(result: dict) -> tuple[float, float, float]:
    """``(acc_think - acc_nothink, low, high)`` of one model, paired over its positions."""
    import torch

    from rlp.bootstrap import bootstrap_intervals

    per = result['per_position']
    diff = torch.tensor(per['acc_think'], dtype=torch.float64) - torch.tensor(per['acc_nothink'], dtype=torch.float64)
    settings = result['settings']
    lo, hi = bootstrap_intervals(diff, resamples=settings.get('resamples', 2000), seed=settings['seed'])[0].tolist()
    return float(diff.mean()), lo, hi


def _said(value: float, lo: float, hi: float, better: str) -> str:
    """'better' / 'worse' when the interval excludes 0, else 'no resolved difference'."""
    if lo <= 0 <= hi:
        return 'no resolved difference'
    up = lo > 0
    return 'better' if up == (better == 'higher') else 'worse'


def verdict(results: dict[str, dict]) -> list[str]:
    """Lines computed from the paired intervals: each RLP arm against CPT and against the base on the metrics of
    ``VERDICT``, and whether thinking helps each model (accuracy with a sampled thought above accuracy without)."""
    lines = []
    for arm in ('rlp', 'rlp+ntp'):
        for other in ('cpt', 'base'):
            if arm not in results or other not in results:
                continue
            parts = []
            for metric, better in VERDICT.items():
                d, lo, hi = compare(results[arm], results[other], metric)
                parts.append(f'{metric} {d:+.3f} [{lo:+.3f}, {hi:+.3f}] {_said(d, lo, hi, better)}')
            lines.append(f'{arm} vs {other}: ' + '; '.join(parts))
    helps = []
    for name, result in results.items():
        d, lo, hi = thinking_helps(result)
        word = 'helps' if lo > 0 else 'hurts' if hi < 0 else 'unresolved'
        helps.append(f'{name} {word} ({d:+.3f} [{lo:+.3f}, {hi:+.3f}])')
    lines.append('thinking (accuracy with a sampled thought minus without): ' + ', '.join(helps))
    return lines


def table(results: dict[str, dict], extra: dict[str, dict[str, str]] | None = None) -> str:
    """Rows = metrics (value and 95% interval), columns = models; ``extra`` rows (e.g. FLOPs, wall time) below."""
    names = list(results)
    width = 24
    lines = [f'{"":18s}' + ''.join(f'{n:>{width}s}' for n in names)]
    for key in ROWS:
        cells = []
        for n in names:
            value = results[n]['metrics'][key]
            ci = results[n].get('intervals', {}).get(key)
            cells.append(f'{value:.3f} [{ci[0]:.3f},{ci[1]:.3f}]' if ci else f'{value:.3f}')
        lines.append(f'{key:18s}' + ''.join(f'{c:>{width}s}' for c in cells))
    for key, row in (extra or {}).items():
        lines.append(f'{key:18s}' + ''.join(f'{row.get(n, "-"):>{width}s}' for n in names))
    return '\n'.join(lines)


def _flops(value: float) -> str:
    return '-' if not value else f'{value:.3g}'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m rlp.demo', description=__doc__.split('\n\n')[0])
    parser.add_argument('--rlp-docs', type=int, default=3000, help='plain training documents (default: %(default)s)')
    parser.add_argument('--heldout', type=int, default=400, help='held-out documents (default: %(default)s)')
    parser.add_argument('--positions', type=int, default=200, help='answer positions evaluated (default: %(default)s)')
    parser.add_argument('--steps', type=int, default=100, help='RLP steps of both RLP arms (default: %(default)s)')
    parser.add_argument(
        '--jobs',
        type=int,
        default=min(3, os.cpu_count() or 1),
        help='commands run at the same time (default: min(3, cores) = %(default)s)',
    )
    parser.add_argument('--base', default=BASE_MODEL, help='the base model folder (default: %(default)s)')
    args = parser.parse_args(argv)
    if not (ROOT / args.base / 'config.json').is_file():
        raise SystemExit(f'demo: --base {args.base} holds no model; run `make demo-base` to build it')
    started = time.monotonic()
    demo, py = ROOT / 'demo', sys.executable
    rel = lambda p: str(p.relative_to(ROOT))
    for name, docs, seed in (('plain', args.rlp_docs, 2), ('heldout', args.heldout, 1)):
        _run([py, '-m', 'pipeline.synthetic', '--docs', str(docs), '--seed', str(seed), '--think-fraction', '0',
              '--out', rel(demo / f'{name}.jsonl')])  # fmt: skip
    for src, out in (('plain', 'rlp-data'), ('heldout', 'heldout')):
        tok = ['--tokenizer', 'pipeline/assets/tokenizer', '--eos-text', '<|endoftext|>', '--seq-len', '128']
        _run([py, '-m', 'pipeline.cli', 'prepare', '--input', rel(demo / f'{src}.jsonl'), *tok, '--out',
              rel(demo / out), '--workers', '2', '--overwrite'])  # fmt: skip
    common = [f'variables.base_model={args.base}', f'variables.rlp_data_dir={rel(demo / "rlp-data")}',
              f'variables.out={rel(demo)}', 'data.clean_stale_shared_memory=false']  # fmt: skip
    lanes = Lanes(args.jobs, demo / 'logs', ROOT)
    print(f'\nRunning the arms side by side: {args.jobs} commands at a time, {lanes.threads} thread(s) each; '
          f'logs in {rel(demo / "logs")}', flush=True)  # fmt: skip
    wall, flops, results = {}, {}, {}
    rlp_done = threading.Event()

    def evaluate(name: str) -> None:
        model = args.base if name == 'base' else rel(demo / 'hf' / ARMS[name])
        path = demo / 'eval' / f'{ARMS.get(name, "demo-base")}.json'
        lanes.run(f'eval-{name}', [py, '-m', 'rlp.tools.cli', 'eval', '--model', model, '--data', rel(demo / 'heldout'),
                  '--baseline', args.base, '--positions', str(args.positions), *ANSWERS, *THOUGHTS, '--json',
                  rel(path)])  # fmt: skip
        results[name] = json.loads(path.read_text())

    def arm_lane(arm: str) -> None:
        run = demo / ARMS[arm]
        if run.exists():
            shutil.rmtree(run)  # a fresh run each time (autoresume would otherwise pick up an old one)
        steps = args.steps
        if arm == 'cpt':  # as many next-token batches as the RLP run's FLOPs buy
            rlp_done.wait()
            if 'rlp' not in flops:
                return  # the RLP arm failed; its failure is reported
            per_batch = cpt_flops_per_batch(args.base, rows=8, seq_len=128)
            steps = matched_batches(flops['rlp'], per_batch)
            print(f'[cpt] matched to RLP: {flops["rlp"]:.3g} FLOPs / {per_batch:.3g} per batch = {steps} batches')
        out = [f'trainer.max_duration={steps}ba', f'trainer.save_interval={steps}ba', f'trainer.output_dir={rel(run)}',
               f'trainer.save_folder={rel(run)}/checkpoints']  # fmt: skip
        try:
            wall[arm] = lanes.run(f'train-{arm}', [py, '-m', 'rlp.train', f'recipes/{ARMS[arm]}.yaml', *common, *out])
            flops[arm] = float(last_record(run)['throughput/flops_total'])
        finally:
            if arm == 'rlp':
                rlp_done.set()
        lanes.run(f'export-{arm}', [py, '-m', 'rlp.tools.cli', 'export', rel(run / 'checkpoints'),
                                    rel(demo / 'hf' / ARMS[arm]), '--overwrite'])  # fmt: skip
        evaluate(arm)

    try:
        lanes.lanes(*(functools.partial(arm_lane, a) for a in ARMS), functools.partial(evaluate, 'base'))
    except JobFailed as err:
        print(f'demo: {err}', file=sys.stderr)
        raise SystemExit(err.code) from None
    results = {name: results[name] for name in ('base', *ARMS)}
    _run([py, '-m', 'rlp.tools.cli', 'plot', *[rel(demo / ARMS[a]) for a in ARMS], '--out', rel(demo / 'plots'),
          '--eval', *[rel(demo / 'eval' / f'{ARMS.get(n, "demo-base")}.json') for n in results]])  # fmt: skip
    extra = {
        'train FLOPs': {a: _flops(flops[a]) for a in flops},
        'FLOPs / RLP': {a: f'{flops[a] / flops["rlp"]:.2f}x' for a in flops},
        'train wall (s)': {a: f'{wall[a]:.0f}' for a in wall},
    }
    print(f'\n== demo: held-out answer positions, {args.positions} positions, G 8; NLL and gain in nats; '
          f'[95% interval]\n' + table(results, extra))  # fmt: skip
    print('\nPaired differences at the same positions (a claim only where the interval excludes 0):')
    for line in verdict(results):
        print('  ' + line)
    summary = {
        'steps': args.steps,
        'positions': args.positions,
        'base_eval': rel(demo / 'eval' / 'demo-base.json'),
        'arms': {a: {'steps': int(last_record(demo / ARMS[a])['batch']) + 1, 'flops': flops[a], 'wall': wall[a],
                     'lr': run_lr(demo / ARMS[a]), 'hf': rel(demo / 'hf' / ARMS[a]),
                     'eval': rel(demo / 'eval' / f'{ARMS[a]}.json')}
                 for a in ARMS},
    }  # fmt: skip
    (demo / 'summary.json').write_text(json.dumps(summary, indent=1))
    print(f'\ntotal {time.monotonic() - started:.0f}s   plots: {demo / "plots"}   evaluations: {demo / "eval"}')
    if not all(math.isfinite(v) for v in flops.values()):
        return 1
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
