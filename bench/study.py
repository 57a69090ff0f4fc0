"""The RLP study: base vs RLP vs a compute-matched next-token continuation, over several seeds (not run in CI).

    python bench/study.py [--seeds 0 1 2] [--rlp-batches 200] [--ntp-batches 200] [--positions 400] [--out study]

It reuses ``make demo``'s data and base (run ``make demo`` first, or it prepares them), then for every seed trains
``recipes/demo-rlp.yaml`` and ``recipes/demo-ntp.yaml`` from the base, exports and evaluates the three models on
the held-out answer positions (``rlp eval``, the same draws for every model of a seed), and writes
``docs/results.md``: the per-seed table, the mean over seeds, the goals (information gain at answers up by
>= 0.3 nats, answer accuracy with thinking up by >= 3 points, no-think NLL within 0.05 of the base, on every seed;
stretch: RLP beats the next-token control on accuracy with thinking), whether each was met, and the plots.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlp.tools.demo import ANSWERS, ROWS, THOUGHTS  # noqa: E402


def _run(cmd: list[str]) -> None:
    print(f'\n$ {shlex.join(cmd)}', flush=True)
    started = time.monotonic()
    if subprocess.call(cmd, cwd=ROOT) != 0:
        raise SystemExit(f'study: step failed: {shlex.join(cmd)}')
    print(f'[{time.monotonic() - started:.0f}s]', flush=True)


def goals(base: dict, rlp: dict, ntp: dict) -> dict[str, bool]:
    b, r, n = base['metrics'], rlp['metrics'], ntp['metrics']
    return {
        'gain +0.3 nats': r['gain_vs_baseline'] - b['gain_vs_baseline'] >= 0.3,
        'accuracy with thinking +3 points': r['acc_think'] - b['acc_think'] >= 0.03,
        'no-think NLL within 0.05': abs(r['nll_nothink'] - b['nll_nothink']) <= 0.05,
        'stretch: beats NTP on accuracy with thinking': r['acc_think'] > n['acc_think'],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--rlp-batches', type=int, default=200)
    parser.add_argument('--ntp-batches', type=int, default=200)
    parser.add_argument('--positions', type=int, default=400)
    parser.add_argument('--out', default='study')
    args = parser.parse_args()
    py, demo, out = sys.executable, ROOT / 'demo', ROOT / args.out
    if not (demo / 'demo-base' / 'checkpoints').exists() or not (demo / 'heldout').exists():
        raise SystemExit('study: run `make demo` first (it prepares the data and trains the base)')
    common = [
        'variables.data_dir=demo/data',
        f'variables.out={args.out}',
        'variables.rlp_data_dir=demo/rlp-data',
        'trainer.load_path=demo/demo-base/checkpoints/latest-rank0.pt',
        'data.clean_stale_shared_memory=false',
    ]  # fmt: skip  (other streaming jobs may share the host)
    _run([py, '-m', 'rlp.tools.cli', 'export', 'demo/demo-base/checkpoints', f'{args.out}/hf/base', '--overwrite'])
    per_seed = {}
    for seed in args.seeds:
        res = {}
        for name, batches in (('rlp', args.rlp_batches), ('ntp', args.ntp_batches)):
            run = f'{args.out}/seed{seed}/{name}'
            _run([py, '-m', 'rlp.train', f'recipes/demo-{name}.yaml', *common, f'seed={seed}',
                  f'run_name=demo-{name}-s{seed}', f'trainer.max_duration={batches}ba', f'trainer.output_dir={run}',
                  f'trainer.save_folder={run}/checkpoints'])  # fmt: skip
            _run([py, '-m', 'rlp.tools.cli', 'export', f'{run}/checkpoints', f'{run}/hf', '--overwrite'])
        for name, model in (('base', f'{args.out}/hf/base'), ('rlp', f'{args.out}/seed{seed}/rlp/hf'),
                            ('ntp', f'{args.out}/seed{seed}/ntp/hf')):  # fmt: skip
            js = out / f'seed{seed}' / f'eval-{name}.json'
            _run([py, '-m', 'rlp.tools.cli', 'eval', '--model', model, '--data', 'demo/heldout', '--baseline',
                  f'{args.out}/hf/base', '--positions', str(args.positions), '--seed', str(seed), *ANSWERS, *THOUGHTS,
                  '--json', str(js)])  # fmt: skip
            res[name] = json.loads(js.read_text())
        per_seed[seed] = res
    runs = [f'{args.out}/seed{s}/{n}' for s in args.seeds for n in ('rlp', 'ntp')]
    evals = [str(out / f'seed{s}' / f'eval-{n}.json') for s in args.seeds for n in ('base', 'rlp', 'ntp')]
    _run([py, '-m', 'rlp.tools.cli', 'plot', *runs, '--out', 'docs/results', '--eval', *evals])
    lines = ['# Results: RLP on the synthetic corpus at CPU scale', '',
             f'Produced by `python bench/study.py --seeds {" ".join(map(str, args.seeds))} --rlp-batches '
             f'{args.rlp_batches} --ntp-batches {args.ntp_batches} --positions {args.positions}` on '
             f'{time.strftime("%Y-%m-%d")}; base, data and recipes as in `make demo`. Evaluation: held-out plain '
             f'documents at answer positions (after `=` and ` make `), the same positions and thought draws for the '
             f'three models of a seed.', '']  # fmt: skip
    for seed, res in per_seed.items():
        lines += [f'## Seed {seed}', '', '| metric | base | RLP | NTP control |', '|---|---|---|---|']
        lines += [f'| {k} | ' + ' | '.join(f'{res[m]["metrics"][k]:.4f}' for m in ('base', 'rlp', 'ntp')) + ' |'
                  for k in ROWS]  # fmt: skip
        lines += ['', 'Goals: ' + ', '.join(f'{g}: {"met" if ok else "not met"}' for g, ok in
                                              goals(res['base'], res['rlp'], res['ntp']).items()), '']  # fmt: skip
    lines += ['## Mean over seeds', '', '| metric | base | RLP | NTP control |', '|---|---|---|---|']
    for k in ROWS:
        cells = []
        for m in ('base', 'rlp', 'ntp'):
            vals = [per_seed[s][m]['metrics'][k] for s in per_seed]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f'{statistics.mean(vals):.4f} ± {sd:.4f}')
        lines.append(f'| {k} | ' + ' | '.join(cells) + ' |')
    lines += ['', '![reward](results/reward.png)', '', '![thoughts](results/thoughts.png)', '',
              '![evaluations](results/eval.png)', '']  # fmt: skip
    (ROOT / 'docs' / 'results.md').write_text('\n'.join(lines))
    print(f'wrote {ROOT / "docs" / "results.md"}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
