"""``make demo``: the main job end to end on the embedded default, on CPU, in a few minutes.

Steps, each printed as the command a user would type:

1. write the bundled synthetic corpus to ``demo/corpus.jsonl`` (``python -m pipeline.synthetic``);
2. tokenise and pack it into MDS shards in ``demo/data`` (``rlp-data prepare``; a second run finds the dataset
   complete and skips the work; one left by an older version is rebuilt);
3. train ``recipes/smoke-cpu.yaml`` with the RLP algorithm mixed with next-token loss
   (``python -m rlp.train``), which ends with a summary: losses, reward and information-gain trend, and where the
   metrics and sampled thoughts are.

The run folder ``demo/run`` is recreated on every demo so that the recipe's ``autoresume`` never picks up an old
demo run; everything else the demo writes stays under ``demo/``.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ['main']

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str]) -> None:
    print(f'\n$ {shlex.join(cmd)}', flush=True)
    started = time.monotonic()
    code = subprocess.call(cmd, cwd=ROOT)
    if code != 0:
        print(f'demo: step failed with exit code {code}: {shlex.join(cmd)}', file=sys.stderr)
        raise SystemExit(code)
    print(f'[{time.monotonic() - started:.0f}s]', flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m rlp.demo', description=__doc__.split('\n\n')[0])
    parser.add_argument('--docs', type=int, default=4000, help='documents in the corpus (default: %(default)s)')
    parser.add_argument('--recipe', default='recipes/smoke-cpu.yaml', help='recipe to train (default: %(default)s)')
    parser.add_argument('overrides', nargs='*', help='recipe overrides key.sub=value passed to rlp.train')
    args = parser.parse_args(argv)

    demo = ROOT / 'demo'
    corpus, data, run = demo / 'corpus.jsonl', demo / 'data', demo / 'run'
    py = sys.executable
    _run(
        [
            py,
            '-m',
            'pipeline.synthetic',
            '--docs',
            str(args.docs),
            '--seed',
            '0',
            '--out',
            str(corpus.relative_to(ROOT)),
        ]
    )
    _run(
        [
            py,
            '-m',
            'pipeline.cli',
            'prepare',
            '--input',
            str(corpus.relative_to(ROOT)),
            '--tokenizer',
            'pipeline/assets/tokenizer',
            '--eos-text',
            '<|endoftext|>',
            '--seq-len',
            '128',
            '--out',
            str(data.relative_to(ROOT)),
            '--workers',
            '2',
            '--overwrite',
        ]
    )
    if run.exists():
        shutil.rmtree(run)
    _run(
        [
            py,
            '-m',
            'rlp.train',
            args.recipe,
            f'variables.data_dir={data.relative_to(ROOT)}',
            f'trainer.output_dir={run.relative_to(ROOT)}',
            f'trainer.save_folder={(run / "checkpoints").relative_to(ROOT)}',
            *args.overrides,
        ]
    )
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
