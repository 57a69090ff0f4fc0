"""``make demo``: pretrain a tiny base, then RLP from it, and measure what RLP changed — on CPU, nothing downloaded.

Steps, each printed as the command a user would type (everything is written under ``demo/``):

1. the bundled synthetic corpus (``python -m pipeline.synthetic``): pretraining documents, 25% of whose problems
   carry worked steps inside ``<think>...</think>``; plain documents for RLP (another seed, no thoughts: RLP writes
   its own); held-out plain documents (a third seed) for the evaluation;
2. all three tokenised into MDS shards (``rlp-data prepare``; a finished dataset is reused);
3. the base: next-token pretraining (``recipes/demo-base.yaml``; a finished base is reused);
4. RLP from the base at answer positions (``recipes/demo-rlp.yaml``) and, as the control, next-token training
   continued from the base for about the same CPU time (``recipes/demo-ntp.yaml``);
5. the three models exported to Hugging Face folders (``rlp export``) and evaluated on the held-out documents at
   the answer positions (``rlp eval --after = --after ' make '``: information gain of sampled thoughts, answer
   accuracy with and without thinking, no-think NLL), against the base's no-think prediction;
6. plots of the two runs and of the evaluations (``rlp plot``), a table, and one line saying what RLP changed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ['main', 'verdict']

ROOT = Path(__file__).resolve().parents[2]
ANSWERS = ['--after', '=', '--after', ' make ']
THOUGHTS = ['--group-size', '8', '--max-thought-tokens', '32', '--temperature', '0.7']  # as in demo-rlp.yaml
ROWS = ('nll_nothink', 'acc_nothink', 'acc_think', 'nll_think_mix', 'gain_vs_baseline', 'best_of_g_helps',
        'thought_len_mean', 'truncation_rate', 'ntp_nll')  # fmt: skip


def _run(cmd: list[str]) -> None:
    print(f'\n$ {shlex.join(cmd)}', flush=True)
    started = time.monotonic()
    code = subprocess.call(cmd, cwd=ROOT)
    if code != 0:
        print(f'demo: step failed with exit code {code}: {shlex.join(cmd)}', file=sys.stderr)
        raise SystemExit(code)
    print(f'[{time.monotonic() - started:.0f}s]', flush=True)


def table(results: dict[str, dict]) -> str:
    """Rows = metrics, columns = models."""
    names = list(results)
    lines = [f'{"":20s}' + ''.join(f'{n:>12s}' for n in names)]
    for key in ROWS:
        lines.append(f'{key:20s}' + ''.join(f'{results[n]["metrics"][key]:12.4f}' for n in names))
    return '\n'.join(lines)


def verdict(base: dict, rlp: dict, ntp: dict) -> str:
    """One line: what RLP changed against the base (and how the next-token control did)."""
    b, r, n = base['metrics'], rlp['metrics'], ntp['metrics']
    gain = r['gain_vs_baseline'] - b['gain_vs_baseline']
    acc = 100 * (r['acc_think'] - b['acc_think'])
    nll = r['nll_nothink'] - b['nll_nothink']
    control = 100 * (n['acc_think'] - b['acc_think'])
    return (
        f'RLP changed the information gain of thoughts at answer positions by {gain:+.3f} nats and answer accuracy '
        f'with thinking by {acc:+.1f} points (no-think NLL {nll:+.3f}); the next-token control changed accuracy with '
        f'thinking by {control:+.1f} points. Thinking helps on {100 * r["best_of_g_helps"]:.0f}% of answers after RLP '
        f'(best of G thoughts beats no thought), {100 * b["best_of_g_helps"]:.0f}% before.'
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m rlp.demo', description=__doc__.split('\n\n')[0])
    parser.add_argument('--docs', type=int, default=8000, help='training documents (default: %(default)s)')
    parser.add_argument('--rlp-docs', type=int, default=3000, help='plain documents for RLP (default: %(default)s)')
    parser.add_argument('--heldout', type=int, default=400, help='held-out documents (default: %(default)s)')
    parser.add_argument('--positions', type=int, default=200, help='answer positions evaluated (default: %(default)s)')
    parser.add_argument('overrides', nargs='*', help='overrides key.sub=value passed to the RLP run')
    args = parser.parse_args(argv)

    demo, py = ROOT / 'demo', sys.executable
    rel = lambda p: str(p.relative_to(ROOT))
    corpus, plain, heldout = demo / 'corpus.jsonl', demo / 'plain.jsonl', demo / 'heldout.jsonl'
    _run([py, '-m', 'pipeline.synthetic', '--docs', str(args.docs), '--seed', '0', '--out', rel(corpus)])
    for path, docs, seed in ((plain, args.rlp_docs, 2), (heldout, args.heldout, 1)):
        _run([py, '-m', 'pipeline.synthetic', '--docs', str(docs), '--seed', str(seed), '--think-fraction', '0',
              '--out', rel(path)])  # fmt: skip
    for src, out in ((corpus, demo / 'data'), (plain, demo / 'rlp-data'), (heldout, demo / 'heldout')):
        tok = ['--tokenizer', 'pipeline/assets/tokenizer', '--eos-text', '<|endoftext|>', '--seq-len', '128']
        _run([py, '-m', 'pipeline.cli', 'prepare', '--input', rel(src), *tok, '--out', rel(out), '--workers', '2',
              '--overwrite'])  # fmt: skip
    common = [f'variables.data_dir={rel(demo / "data")}', f'variables.out={rel(demo)}']
    rlp_data = [f'variables.rlp_data_dir={rel(demo / "rlp-data")}']
    _run([py, '-m', 'rlp.train', 'recipes/demo-base.yaml', *common])
    for name, extra in (('demo-rlp', rlp_data + args.overrides), ('demo-ntp', [])):
        if (demo / name).exists():
            shutil.rmtree(demo / name)  # a fresh run each time (autoresume would otherwise pick up an old one)
        _run([py, '-m', 'rlp.train', f'recipes/{name}.yaml', *common, *extra])
    results = {}
    for name in ('base', 'rlp', 'ntp'):
        run = demo / f'demo-{name}'
        _run([py, '-m', 'rlp.tools.cli', 'export', rel(run / 'checkpoints'), rel(demo / 'hf' / name), '--overwrite'])
    for name in ('base', 'rlp', 'ntp'):
        out = demo / 'eval' / f'{name}.json'
        _run([py, '-m', 'rlp.tools.cli', 'eval', '--model', rel(demo / 'hf' / name), '--data', rel(demo / 'heldout'),
              '--baseline', rel(demo / 'hf' / 'base'), '--positions', str(args.positions), *ANSWERS, *THOUGHTS,
              '--json', rel(out)])  # fmt: skip
        results[name] = json.loads(out.read_text())
    _run([py, '-m', 'rlp.tools.cli', 'plot', rel(demo / 'demo-rlp'), rel(demo / 'demo-ntp'), '--out',
          rel(demo / 'plots'), '--eval', *[rel(demo / 'eval' / f'{n}.json') for n in results]])  # fmt: skip
    print('\n== demo: held-out answer positions (gain and NLL in nats)\n' + table(results))
    print('\n' + verdict(results['base'], results['rlp'], results['ntp']))
    print(f'plots: {demo / "plots"}   runs: {demo / "demo-rlp"}, {demo / "demo-ntp"}   evaluations: {demo / "eval"}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
