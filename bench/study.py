"""The RLP study: RLP, RLP + next-token loss and FLOP-matched CPT from one base, on several seeds (not run in CI).

    python bench/study.py [--seeds 0 1 2] [--steps 100] [--long 400 --long-seeds 0] [--extra-arms horizon rpt]
                          [--positions 200] [--grid --grid-steps 50] [--jobs 2] [--out study]

Every arm starts from the shipped base (``rlp/assets/demo-base``) and reads the same plain documents as ``make demo``
(``demo/rlp-data``; run ``make demo`` first: its seed-0 runs are reused when they were trained at the study's learning
rates). For each seed and each step count (``--long`` adds step counts for ``--long-seeds`` only; longer runs resume
the shorter run of the same seed), the two RLP arms train and CPT trains for as many batches as the RLP run's
counted FLOPs buy. ``--extra-arms`` adds RLP with other rewards (``rlp.reward.kind``: the discounted multi-token
``horizon`` gain and RPT's 0/1 ``rpt`` reward) at RLP's learning rate. Every model is evaluated on the held-out
documents (``demo/heldout``, evaluation seed 0: the same positions and thought draws for every model) at answer
positions and at uniform positions.

With ``--grid`` it first picks each arm's learning rate on the validation documents (``demo/valid``, a fourth seed,
never the test documents) from a grid of four values per arm, each arm by the quantity its own objective optimises,
measured at answer positions after ``--grid-steps``: the information gain of a sampled thought against the base's
no-think prediction for the two RLP arms, the no-think NLL for CPT (both are recorded for every grid point);
``--grid-only`` stops there.

Runs go side by side, at most ``--jobs`` commands at once (:mod:`rlp.tools.jobs`; logs in ``<out>/logs``): per
seed one lane for RLP then its FLOP-matched CPT, one for RLP + NTP, one per extra arm. Results go to
``<out>/state.json`` after every step (a rerun skips what is done) and ``docs/results.md`` is rewritten from it each
time, so a study stopped early still reports what it measured.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlp.tools.demo import (  # noqa: E402
    ANSWERS,
    ARMS,
    BASE_MODEL,
    THOUGHTS,
    _run,
    compare,
    cpt_flops_per_batch,
    matched_batches,
    thinking_helps,
)
from rlp.tools.jobs import JobFailed, Lanes  # noqa: E402

PY = sys.executable
# four values per arm, steps of ~3x, placed so that the chosen value is inside the grid (grids of three values picked
# the largest for every arm, and RLP + NTP's four-value grid from 3e-5 picked its largest, so it moved up one step)
GRID = {'rlp': [1e-5, 3e-5, 1e-4, 3e-4], 'rlp+ntp': [1e-4, 3e-4, 1e-3, 3e-3], 'cpt': [1e-4, 3e-4, 1e-3, 3e-3]}
# what each arm's learning rate is chosen by: (metric, direction); the metric its own training objective optimises
CRITERION = {'rlp': ('gain_vs_baseline', 'higher'), 'rlp+ntp': ('gain_vs_baseline', 'higher'),
             'cpt': ('nll_nothink', 'lower')}  # fmt: skip
# the arms beyond make demo's three: other rewards of RLP (rlp.reward.kind), at RLP's learning rate
EXTRA = {'horizon': 'demo-horizon', 'rpt': 'demo-rpt'}
STUDY_ARMS = {**ARMS, **EXTRA}
KINDS = {'answers': ANSWERS, 'uniform': []}
MARK = '<!-- written by hand below this line; bench/study.py keeps it -->'
METRICS = ('nll_nothink', 'acc_nothink', 'acc_think', 'gain_vs_baseline', 'gain_vs_self', 'best_of_g_helps',
           'truncation_rate')  # fmt: skip


class Study:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = ROOT / args.out
        self.path = self.out / 'state.json'
        self.state = json.loads(self.path.read_text()) if self.path.exists() else {'runs': {}, 'evals': {}, 'lr': {}}
        self.per_batch = cpt_flops_per_batch(BASE_MODEL, rows=8, seq_len=128)
        self.lanes = Lanes(args.jobs, self.out / 'logs', ROOT)
        self.lock = threading.RLock()  # lanes are threads: state changes and saves one at a time

    def save(self) -> None:
        with self.lock:
            self.out.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.state, indent=1))
            (ROOT / 'docs' / 'results.md').write_text(report(self.state, self.args))

    def train(self, arm: str, seed: int, steps: int, tag: str, lr: float | None = None, data: str = 'rlp-data') -> dict:
        """Train (or extend) run ``tag`` of ``arm`` to ``steps`` batches; export that checkpoint; its FLOPs and time."""
        key = f'{tag}@{steps}'
        if key in self.state['runs']:
            return self.state['runs'][key]
        run = self.out / 'runs' / tag
        extended = run.exists()  # resumed from this run's earlier checkpoint: its earlier wall time counts
        lr = lr if lr is not None else self.state['lr'].get('rlp' if arm in EXTRA else arm)
        over = [f'trainer.optimizer.lr={lr}'] if lr is not None else []
        folder = run.relative_to(ROOT)
        cmd = [PY, '-m', 'rlp.train', f'recipes/{STUDY_ARMS[arm]}.yaml', f'variables.rlp_data_dir=demo/{data}',
               f'seed={seed}', f'run_name={tag}', f'trainer.max_duration={steps}ba', f'trainer.save_interval={steps}ba',
               f'trainer.output_dir={folder}', f'trainer.save_folder={folder}/checkpoints',
               'data.clean_stale_shared_memory=false', *over]  # fmt: skip
        took = self.lanes.run(f'train-{tag}-{steps}', cmd)
        before = [v for k, v in self.state['runs'].items() if k.startswith(f'{tag}@')]
        records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
        flops = float(next(r for r in records if r['batch'] == steps - 1)['throughput/flops_total'])
        (ckpt,) = sorted((run / 'checkpoints').glob(f'*-ba{steps}-rank0.pt'))
        hf = run / f'hf-{steps}'
        export = [PY, '-m', 'rlp.tools.cli', 'export', str(ckpt.relative_to(ROOT)), str(hf.relative_to(ROOT))]
        self.lanes.run(f'export-{tag}-{steps}', [*export, '--overwrite'])
        wall = took + (max((v['wall'] for v in before), default=0.0) if extended else 0.0)
        with self.lock:
            self.state['runs'][key] = {'arm': arm, 'seed': seed, 'steps': steps, 'lr': lr, 'flops': flops,
                                       'wall': wall, 'hf': str(hf.relative_to(ROOT)),
                                       'threads': self.lanes.threads}  # fmt: skip
            self.save()
        return self.state['runs'][key]

    def evaluate(self, model: str, kind: str, data: str = 'heldout', positions: int | None = None) -> dict:
        key = f'{model}|{kind}|{data}'
        if key not in self.state['evals']:
            path = self.out / 'evals' / (key.replace('/', '_').replace('|', '.') + '.json')
            name = 'eval-' + path.stem.replace('study_runs_', '')
            self.lanes.run(name, [PY, '-m', 'rlp.tools.cli', 'eval', '--model', model, '--data', f'demo/{data}',
                                  '--baseline', BASE_MODEL, '--positions', str(positions or self.args.positions),
                                  *KINDS[kind], *THOUGHTS, '--json', str(path.relative_to(ROOT))])  # fmt: skip
            with self.lock:
                self.state['evals'][key] = str(path.relative_to(ROOT))
                self.save()
        return json.loads((ROOT / self.state['evals'][key]).read_text())

    def cell(self, seed: int, steps: int, arm: str, run: dict) -> None:
        """Record ``run`` as ``arm``'s run of seed ``seed`` after ``steps`` RLP steps."""
        with self.lock:
            self.state.setdefault('cells', {}).setdefault(f's{seed}@{steps}', {})[arm] = (
                f'{r_tag(arm, seed)}@{run["steps"]}'
            )
            self.save()

    def rlp_lane(self, seed: int, counts: list[int]) -> None:
        """RLP at each step count, then CPT for as many batches as those RLP FLOPs buy; every evaluation."""
        for steps in sorted(counts):
            run = self.train('rlp', seed, steps, r_tag('rlp', seed))
            self.cell(seed, steps, 'rlp', run)
            cpt = self.train('cpt', seed, matched_batches(run['flops'], self.per_batch), r_tag('cpt', seed))
            self.cell(seed, steps, 'cpt', cpt)
            for kind in self.args.kinds:
                self.evaluate(run['hf'], kind)
                self.evaluate(cpt['hf'], kind)

    def arm_lane(self, seed: int, counts: list[int], arm: str) -> None:
        """``arm`` (RLP + next-token loss, or an extra reward) at each step count; its evaluations."""
        for steps in sorted(counts):
            run = self.train(arm, seed, steps, r_tag(arm, seed))
            self.cell(seed, steps, arm, run)
            for kind in self.args.kinds:
                self.evaluate(run['hf'], kind)

    def adopt_demo(self, steps: int) -> None:
        """Take ``make demo``'s runs (seed 0) of the arms it trained at this study's learning rates, and their
        answer-position evaluations, as the study's seed-0 runs (the same recipe, data, seed and evaluation)."""
        path = ROOT / 'demo' / 'summary.json'
        if not path.exists():
            return
        demo = json.loads(path.read_text())
        if demo['steps'] != steps or demo['positions'] != self.args.positions:
            return
        for arm in ARMS:
            run = demo['arms'][arm]
            key = f'{r_tag(arm, 0)}@{run["steps"]}'
            if key in self.state['runs'] or run['lr'] != self.state['lr'].get(arm, run['lr']):
                continue
            self.state['runs'][key] = {'arm': arm, 'seed': 0, **run}
            self.state['evals'][f'{run["hf"]}|answers|heldout'] = run['eval']
        self.state['evals'].setdefault(f'{BASE_MODEL}|answers|heldout', demo['base_eval'])
        self.save()

    def grid_arm(self, arm: str) -> None:
        """Train ``arm`` at each learning rate of its grid on seed 0 (CPT: FLOP-matched to the chosen RLP run),
        evaluate on the validation documents, keep the best by the arm's criterion."""
        if arm in self.state['lr']:
            return
        scores = {}
        for lr in GRID[arm]:
            steps = self.args.grid_steps
            if arm == 'cpt':
                ref = self.state['runs'][f'grid-rlp-{self.state["lr"]["rlp"]}@{self.args.grid_steps}']
                steps = matched_batches(ref['flops'], self.per_batch)
            run = self.train(arm, 0, steps, f'grid-{arm.replace("+", "-")}-{lr}', lr=lr)
            res = self.evaluate(run['hf'], 'answers', data='valid', positions=self.args.grid_positions)
            scores[lr] = {m: res['metrics'][m] for m in ('gain_vs_baseline', 'nll_nothink', 'acc_think')}
        metric, better = CRITERION[arm]
        sign = 1.0 if better == 'higher' else -1.0
        with self.lock:
            self.state['lr'][arm] = max(scores, key=lambda lr: sign * scores[lr][metric])
            self.state.setdefault('grid', {})[arm] = {str(k): v for k, v in scores.items()}
            self.state['grid_steps'] = self.args.grid_steps
            self.save()

    def grid(self) -> None:
        """The learning-rate grid: RLP then CPT in one lane (CPT is matched to the chosen RLP run), RLP + NTP in
        another."""

        def rlp_then_cpt() -> None:
            self.grid_arm('rlp')
            self.grid_arm('cpt')

        self.lanes.lanes(rlp_then_cpt, functools.partial(self.grid_arm, 'rlp+ntp'))


def r_tag(arm: str, seed: int) -> str:
    """The run name of ``arm``'s seed-``seed`` run (run names allow letters, digits, '.', '_' and '-')."""
    return f'{arm.replace("+", "-")}-s{seed}'


def _mean_sd(values: list[float], fmt: str = '.3f') -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f'{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}'


def report(state: dict, args: argparse.Namespace) -> str:
    """docs/results.md from the study's state (what has been measured so far)."""
    evals = {k: json.loads((ROOT / v).read_text()) for k, v in state['evals'].items()}
    lines = ['# Results: RLP, RLP + next-token loss and FLOP-matched CPT at CPU scale', '',
             f'Produced by `python bench/study.py {" ".join(sys.argv[1:])}` (last update '
             f'{time.strftime("%Y-%m-%d %H:%M")} UTC). Every arm starts from the shipped base '
             '`rlp/assets/demo-base` and reads the same plain documents '
             '(`demo/rlp-data`) in the same order; CPT runs for as many batches as the RLP run of the same seed '
             'used FLOPs (`throughput/flops_total`). Evaluation: the held-out documents (`demo/heldout`), evaluation '
             'seed 0, G 8, thoughts ≤ 32 tokens, temperature 0.7, the same positions and thought draws for every '
             'model; `[a, b]` is a 95% bootstrap interval over positions; ± is the standard deviation over training '
             'seeds.', '']  # fmt: skip
    if state.get('grid'):
        steps = state.get('grid_steps', args.grid_steps)
        lines += [f'## Learning rates (validation documents, answer positions, after {steps} RLP steps; '
                  'CPT FLOP-matched to the chosen RLP run)', '',
                  '| arm | lr | gain vs base | no-think NLL | acc. with thought | chosen by |',
                  '|---|---|---|---|---|---|']  # fmt: skip
        for arm, scores in state['grid'].items():
            for lr, v in scores.items():
                mark = ' **(chosen)**' if float(lr) == state['lr'].get(arm) else ''
                lines.append(f'| {arm} | {lr}{mark} | {v["gain_vs_baseline"]:.3f} | {v["nll_nothink"]:.3f} | '
                             f'{v["acc_think"]:.3f} | {CRITERION[arm][0]} ({CRITERION[arm][1]}) |')  # fmt: skip
        lines.append('')
    cells = state.get('cells', {})
    for steps in sorted({int(k.split('@')[1]) for k in cells}):
        done = [k for k in cells if k.endswith(f'@{steps}') and all(a in cells[k] for a in ARMS)]  # the three arms
        seeds = sorted(int(k[1:].split('@')[0]) for k in done)
        if not seeds:
            continue
        runs = {s: {a: state['runs'][t] for a, t in cells[f's{s}@{steps}'].items()} for s in seeds}
        arms = [*ARMS, *(a for a in EXTRA if all(a in runs[s] for s in seeds))]
        lines += [f'## After {steps} RLP steps (seeds {", ".join(map(str, seeds))})', '',
                  '| arm | batches | FLOPs | FLOPs / RLP | train wall (s) | lr |',
                  '|---|---|---|---|---|---|']  # fmt: skip
        for arm in arms:
            rs = [runs[s][arm] for s in seeds]
            ratio = [r['flops'] / runs[s]['rlp']['flops'] for s, r in zip(seeds, rs)]
            lines.append(f'| {arm} | {_mean_sd([r["steps"] for r in rs], ".0f")} | '
                         f'{_mean_sd([r["flops"] for r in rs], ".3g")} | {_mean_sd(ratio, ".2f")} | '
                         f'{_mean_sd([r["wall"] for r in rs], ".0f")} | {rs[0]["lr"] or "recipe"} |')  # fmt: skip
        lines.append('')
        for kind in KINDS:
            models = {'base': f'{BASE_MODEL}|{kind}|heldout'}
            have = [s for s in seeds if all(f'{runs[s][a]["hf"]}|{kind}|heldout' in evals for a in arms)]
            if not have or models['base'] not in evals:
                continue
            base = evals[models['base']]
            lines += [f'### {kind} positions, {steps} steps (seeds {", ".join(map(str, have))})', '',
                      '| metric | base | ' + ' | '.join(arms) + ' |', '|---|---|' + '---|' * len(arms)]  # fmt: skip
            for m in METRICS:
                lo, hi = base['intervals'][m]
                row = [f'{base["metrics"][m]:.3f} [{lo:.3f}, {hi:.3f}]']
                for arm in arms:
                    vals = [evals[f'{runs[s][arm]["hf"]}|{kind}|heldout'] for s in have]
                    if len(vals) == 1:
                        lo, hi = vals[0]['intervals'][m]
                        row.append(f'{vals[0]["metrics"][m]:.3f} [{lo:.3f}, {hi:.3f}]')
                    else:
                        row.append(_mean_sd([v['metrics'][m] for v in vals]))
                lines.append(f'| {m} | ' + ' | '.join(row) + ' |')
            lines += ['', 'Paired differences at the same positions, per seed (`a − b [95% interval]`):', '']
            for s in have:
                res = {a: evals[f'{runs[s][a]["hf"]}|{kind}|heldout'] for a in arms}
                for arm in (a for a in arms if a != 'cpt'):
                    parts = []
                    for m in ('acc_think', 'gain_vs_baseline', 'nll_nothink'):
                        d, lo, hi = compare(res[arm], res['cpt'], m)
                        parts.append(f'{m} {d:+.3f} [{lo:+.3f}, {hi:+.3f}]')
                    lines.append(f'- seed {s}, {arm} − cpt: ' + '; '.join(parts))
                helps = []
                for name, r in (('base', base), *res.items()):
                    d, lo, hi = thinking_helps(r)
                    helps.append(f'{name} {d:+.3f} [{lo:+.3f}, {hi:+.3f}]')
                lines.append(f'- seed {s}, accuracy with a thought − without: ' + ', '.join(helps))
            lines.append('')
    kept = ''
    old = ROOT / 'docs' / 'results.md'
    if old.exists() and MARK in old.read_text():  # the hand-written conclusion survives a rerun
        kept = old.read_text().split(MARK, 1)[1]
    return '\n'.join(lines) + '\n' + MARK + (kept or '\n\n## Conclusion\n\n(to be written from the tables above)\n')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--steps', type=int, nargs='+', default=[100])
    parser.add_argument('--long', type=int, nargs='*', default=[400], help='more step counts, for --long-seeds only')
    parser.add_argument('--long-seeds', type=int, nargs='*', default=[0])
    parser.add_argument(
        '--extra-arms',
        nargs='*',
        default=[],
        choices=list(EXTRA),
        help='RLP with other rewards (recipes/demo-horizon.yaml, demo-rpt.yaml) at --steps',
    )
    parser.add_argument('--positions', type=int, default=200)
    parser.add_argument('--kinds', nargs='+', default=list(KINDS), choices=list(KINDS))
    parser.add_argument('--grid', action='store_true', help="pick each arm's lr on the validation documents first")
    parser.add_argument('--grid-steps', type=int, default=50)
    parser.add_argument('--grid-positions', type=int, default=100)
    parser.add_argument('--grid-only', action='store_true', help='stop after the learning-rate grid')
    parser.add_argument('--jobs', type=int, default=min(2, os.cpu_count() or 1), help='commands at the same time')
    parser.add_argument('--out', default='study')
    args = parser.parse_args()
    for folder in ('rlp-data', 'heldout'):
        if not (ROOT / 'demo' / folder / 'index.json').exists():
            raise SystemExit(f'study: demo/{folder} is missing; run `make demo` first')
    if args.grid and not (ROOT / 'demo' / 'valid' / 'index.json').exists():  # validation: a fourth seed
        _run([PY, '-m', 'pipeline.synthetic', '--docs', '400', '--seed', '3', '--think-fraction', '0', '--out',
              'demo/valid.jsonl'])  # fmt: skip
        _run([PY, '-m', 'pipeline.cli', 'prepare', '--input', 'demo/valid.jsonl', '--tokenizer',
              'pipeline/assets/tokenizer', '--eos-text', '<|endoftext|>', '--seq-len', '128', '--out', 'demo/valid',
              '--workers', '2', '--overwrite'])  # fmt: skip
    study = Study(args)
    if args.grid:
        study.grid()
        if args.grid_only:
            study.save()
            return 0
    study.adopt_demo(min(args.steps))
    lanes = []
    for seed in args.seeds:
        counts = sorted({*args.steps, *(args.long if seed in args.long_seeds else [])})
        lanes.append(functools.partial(study.rlp_lane, seed, counts))
        lanes.append(functools.partial(study.arm_lane, seed, counts, 'rlp+ntp'))
        lanes += [functools.partial(study.arm_lane, seed, list(args.steps), arm) for arm in args.extra_arms]
    base = [functools.partial(study.evaluate, BASE_MODEL, kind) for kind in args.kinds]
    try:
        study.lanes.lanes(*base, *lanes)
    except JobFailed as err:
        print(f'study: {err}', file=sys.stderr)
        return err.code
    study.save()
    print(f'wrote {ROOT / "docs" / "results.md"}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
