"""The RLP study: RLP, RLP + next-token loss and FLOP-matched CPT from one base, on several seeds (not run in CI).

    python bench/study.py [--seeds 0 1 2] [--steps 100 400] [--positions 200] [--grid] [--out study]

Every arm starts from the shipped base (``rlp/assets/demo-base``) and reads the same plain documents as ``make demo``
(``demo/rlp-data``; run ``make demo`` first: its seed-0 runs at 100 steps are reused as they are). For each seed and
each step count (runs are extended by resuming: the 400-step run is the 100-step run continued), the two RLP arms
train with their recipes' learning rates and CPT trains for as many batches as the RLP run's counted FLOPs buy.
Every model is evaluated on the held-out documents (``demo/heldout``, evaluation seed 0: the same positions and
thought draws for every model) at answer positions and at uniform positions. With ``--grid`` it first picks each
arm's learning rate on the validation documents (``demo/valid``, a fourth seed, never the test documents) from a
grid of three values per arm, each arm by the quantity its own objective optimises, measured at answer positions
after ``--grid-steps``: the information gain of a sampled thought against the base's no-think prediction for the
two RLP arms, the no-think NLL for CPT (both are recorded for every grid point); ``--grid-only`` stops there.

Results go to ``<out>/state.json`` after every step (a rerun skips what is done) and ``docs/results.md`` is rewritten
from it each time, so a study stopped early still reports what it measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
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

PY = sys.executable
GRID = {'rlp': [1e-5, 3e-5, 1e-4], 'rlp+ntp': [3e-5, 1e-4, 3e-4], 'cpt': [1e-4, 3e-4, 1e-3]}
# what each arm's learning rate is chosen by: (metric, direction); the metric its own training objective optimises
CRITERION = {'rlp': ('gain_vs_baseline', 'higher'), 'rlp+ntp': ('gain_vs_baseline', 'higher'),
             'cpt': ('nll_nothink', 'lower')}  # fmt: skip
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

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.state, indent=1))
        (ROOT / 'docs' / 'results.md').write_text(report(self.state, self.args))

    def train(self, arm: str, seed: int, steps: int, tag: str, lr: float | None = None, data: str = 'rlp-data') -> dict:
        """Train (or extend) run ``tag`` of ``arm`` to ``steps`` batches; export that checkpoint; its FLOPs and time."""
        key = f'{tag}@{steps}'
        if key in self.state['runs']:
            return self.state['runs'][key]
        run = self.out / 'runs' / tag
        lr = lr if lr is not None else self.state['lr'].get(arm)
        over = [f'trainer.optimizer.lr={lr}'] if lr is not None else []
        folder = run.relative_to(ROOT)
        cmd = [PY, '-m', 'rlp.train', f'recipes/{ARMS[arm]}.yaml', f'variables.rlp_data_dir=demo/{data}',
               f'seed={seed}', f'run_name={tag}', f'trainer.max_duration={steps}ba', f'trainer.save_interval={steps}ba',
               f'trainer.output_dir={folder}', f'trainer.save_folder={folder}/checkpoints',
               'data.clean_stale_shared_memory=false', *over]  # fmt: skip
        took = _run(cmd)
        before = [v for k, v in self.state['runs'].items() if k.startswith(f'{tag}@')]
        records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
        flops = float(next(r for r in records if r['batch'] == steps - 1)['throughput/flops_total'])
        (ckpt,) = sorted((run / 'checkpoints').glob(f'*-ba{steps}-rank0.pt'))
        hf = run / f'hf-{steps}'
        _run(
            [PY, '-m', 'rlp.tools.cli', 'export', str(ckpt.relative_to(ROOT)), str(hf.relative_to(ROOT)), '--overwrite']
        )
        wall = took + max((v['wall'] for v in before), default=0.0)
        self.state['runs'][key] = {'arm': arm, 'seed': seed, 'steps': steps, 'lr': lr, 'flops': flops, 'wall': wall,
                                   'hf': str(hf.relative_to(ROOT))}  # fmt: skip
        self.save()
        return self.state['runs'][key]

    def evaluate(self, model: str, kind: str, data: str = 'heldout', positions: int | None = None) -> dict:
        key = f'{model}|{kind}|{data}'
        if key not in self.state['evals']:
            path = self.out / 'evals' / (key.replace('/', '_').replace('|', '.') + '.json')
            _run([PY, '-m', 'rlp.tools.cli', 'eval', '--model', model, '--data', f'demo/{data}', '--baseline',
                  BASE_MODEL, '--positions', str(positions or self.args.positions), *KINDS[kind], *THOUGHTS, '--json',
                  str(path.relative_to(ROOT))])  # fmt: skip
            self.state['evals'][key] = str(path.relative_to(ROOT))
            self.save()
        return json.loads((ROOT / self.state['evals'][key]).read_text())

    def arms(self, seed: int, steps: int) -> dict[str, dict]:
        if f's{seed}@{steps}' in self.state.get('cells', {}):
            return {a: self.state['runs'][t] for a, t in self.state['cells'][f's{seed}@{steps}'].items()}
        runs = {arm: self.train(arm, seed, steps, f'{arm}-s{seed}') for arm in ('rlp', 'rlp+ntp')}
        cpt = matched_batches(runs['rlp']['flops'], self.per_batch)
        runs['cpt'] = self.train('cpt', seed, cpt, f'cpt-s{seed}')
        self.state.setdefault('cells', {})[f's{seed}@{steps}'] = {a: f'{r_tag(a, seed)}@{r["steps"]}'
                                                                   for a, r in runs.items()}  # fmt: skip
        self.save()
        return runs

    def adopt_demo(self, steps: int) -> None:
        """Take ``make demo``'s runs (seed 0, its step count) and answer-position evaluations as they are."""
        path = ROOT / 'demo' / 'summary.json'
        if not path.exists() or f's0@{steps}' in self.state.get('cells', {}):
            return
        demo = json.loads(path.read_text())
        if demo['steps'] != steps or demo['positions'] != self.args.positions:
            return
        chosen = {a: self.state['lr'].get(a, demo['arms'][a]['lr']) for a in ARMS}
        if any(demo['arms'][a]['lr'] != chosen[a] for a in ARMS):  # trained with other learning rates
            return
        for arm in ARMS:
            run = demo['arms'][arm]
            self.state['runs'][f'demo-{arm}@{run["steps"]}'] = {'arm': arm, 'seed': 0, **run}
            self.state['evals'][f'{run["hf"]}|answers|heldout'] = run['eval']
        self.state['evals'][f'{BASE_MODEL}|answers|heldout'] = demo['base_eval']
        self.state.setdefault('cells', {})[f's0@{steps}'] = {a: f'demo-{a}@{demo["arms"][a]["steps"]}' for a in ARMS}
        self.save()

    def grid(self) -> None:
        for arm, values in GRID.items():
            if arm in self.state['lr']:
                continue
            scores = {}
            for lr in values:
                if arm == 'cpt':
                    ref = self.state['runs'].get(f'grid-rlp-{self.state["lr"].get("rlp", 3e-5)}@{self.args.grid_steps}')
                    steps = matched_batches(ref['flops'], self.per_batch) if ref else self.args.grid_steps
                else:
                    steps = self.args.grid_steps
                run = self.train(arm, 0, steps, f'grid-{arm}-{lr}', lr=lr)
                res = self.evaluate(run['hf'], 'answers', data='valid', positions=self.args.grid_positions)
                scores[lr] = {m: res['metrics'][m] for m in ('gain_vs_baseline', 'nll_nothink', 'acc_think')}
            metric, better = CRITERION[arm]
            sign = 1.0 if better == 'higher' else -1.0
            self.state['lr'][arm] = max(scores, key=lambda lr: sign * scores[lr][metric])
            self.state.setdefault('grid', {})[arm] = {str(k): v for k, v in scores.items()}
            self.save()


def r_tag(arm: str, seed: int) -> str:
    return f'{arm}-s{seed}'


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
        lines += [f'## Learning rates (validation documents, answer positions, after {args.grid_steps} RLP steps; '
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
        seeds = sorted(int(k[1:].split('@')[0]) for k in cells if k.endswith(f'@{steps}'))
        runs = {s: {a: state['runs'][t] for a, t in cells[f's{s}@{steps}'].items()} for s in seeds}
        lines += [f'## After {steps} RLP steps (seeds {", ".join(map(str, seeds))})', '',
                  '| arm | batches | FLOPs | FLOPs / RLP | train wall (s) | lr |',
                  '|---|---|---|---|---|---|']  # fmt: skip
        for arm in ARMS:
            rs = [runs[s][arm] for s in seeds]
            ratio = [r['flops'] / runs[s]['rlp']['flops'] for s, r in zip(seeds, rs)]
            lines.append(f'| {arm} | {_mean_sd([r["steps"] for r in rs], ".0f")} | '
                         f'{_mean_sd([r["flops"] for r in rs], ".3g")} | {_mean_sd(ratio, ".2f")} | '
                         f'{_mean_sd([r["wall"] for r in rs], ".0f")} | {rs[0]["lr"] or "recipe"} |')  # fmt: skip
        lines.append('')
        for kind in KINDS:
            models = {'base': f'{BASE_MODEL}|{kind}|heldout'}
            have = [s for s in seeds if all(f'{runs[s][a]["hf"]}|{kind}|heldout' in evals for a in ARMS)]
            if not have or models['base'] not in evals:
                continue
            base = evals[models['base']]
            lines += [f'### {kind} positions, {steps} steps (seeds {", ".join(map(str, have))})', '',
                      '| metric | base | ' + ' | '.join(ARMS) + ' |', '|---|---|' + '---|' * len(ARMS)]  # fmt: skip
            for m in METRICS:
                lo, hi = base['intervals'][m]
                row = [f'{base["metrics"][m]:.3f} [{lo:.3f}, {hi:.3f}]']
                for arm in ARMS:
                    vals = [evals[f'{runs[s][arm]["hf"]}|{kind}|heldout'] for s in have]
                    if len(vals) == 1:
                        lo, hi = vals[0]['intervals'][m]
                        row.append(f'{vals[0]["metrics"][m]:.3f} [{lo:.3f}, {hi:.3f}]')
                    else:
                        row.append(_mean_sd([v['metrics'][m] for v in vals]))
                lines.append(f'| {m} | ' + ' | '.join(row) + ' |')
            lines += ['', 'Paired differences at the same positions, per seed (`a − b [95% interval]`):', '']
            for s in have:
                res = {a: evals[f'{runs[s][a]["hf"]}|{kind}|heldout'] for a in ARMS}
                for arm in ('rlp', 'rlp+ntp'):
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
    parser.add_argument('--steps', type=int, nargs='+', default=[100, 400])
    parser.add_argument('--positions', type=int, default=200)
    parser.add_argument('--kinds', nargs='+', default=list(KINDS), choices=list(KINDS))
    parser.add_argument('--grid', action='store_true', help="pick each arm's lr on the validation documents first")
    parser.add_argument('--grid-steps', type=int, default=100)
    parser.add_argument('--grid-positions', type=int, default=100)
    parser.add_argument('--grid-only', action='store_true', help='stop after the learning-rate grid')
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
    for steps in sorted(args.steps):
        for seed in args.seeds:
            runs = study.arms(seed, steps)
            for kind in args.kinds:
                study.evaluate(BASE_MODEL, kind)
                for arm in ARMS:
                    study.evaluate(runs[arm]['hf'], kind)
    study.save()
    print(f'wrote {ROOT / "docs" / "results.md"}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
