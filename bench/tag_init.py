"""How added think tags start on a pretrained model: the first batches of RLP on SmolLM2-135M for each option.

    make smollm2                                       # models/smollm2-135m (tags added) and the plain documents
    python bench/tag_init.py [--batches 3] [--arms mean,pieces,...] [--summary-only]

Every arm trains ``recipes/smollm2-135m-rlp.yaml`` from the same folder without think tags (``rlp pretrained smollm2
--no-tags``, written to models/smollm2-135m-notags when missing), so the tags are added at the start of the run the
way the arm's ``rlp.template`` says (or, for the ``text`` arms, written as plain text of several tokens); same
documents (models/data/smollm2-plain: 200 plain synthetic documents, seed 2, tokenised with SmolLM2's tokenizer,
sequence length 256), same seed, ``--batches`` optimizer steps, one thread (``OMP_NUM_THREADS=1``). Printed per arm,
averaged over the batches: the truncation rate (thoughts that reached the budget without sampling the closing tag),
the reward (``rlp/reward_mean`` = S_pred - S_EMA, nats), ``rlp/gain_vs_ema``, S_pred, S_EMA, the mean thought length
and the positions scored.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTAGS = 'models/smollm2-135m-notags'
DATA = 'models/data/smollm2-plain'
INSTRUCTION = 'Think step by step between <think> and </think>, then continue the text.\n'
TEXT = ['rlp.template.tags=text', 'rlp.template.add_tags=false']
ARMS = {
    'mean': ['rlp.template.tag_init=mean'],
    'pieces': ['rlp.template.close_init_text=null'],
    'nl': ['rlp.template.close_init_text="\\n"'],
    'period': ['rlp.template.close_init_text="."'],
    'nl-so': ['rlp.template.open_init_text=" So"', 'rlp.template.close_init_text="\\n"'],
    'mix-period': ['rlp.template.close_init_text="</think>."'],
    'mix-nl': ['rlp.template.close_init_text="</think>\\n"'],
    'imend': ['rlp.template.close_init_text=<|im_end|>'],
    'chat': ['rlp.template.open_init_text=<|im_start|>', 'rlp.template.close_init_text=<|im_end|>'],
    'pieces-instr': ['rlp.template.close_init_text=null', f'rlp.template.instruction={json.dumps(INSTRUCTION)}'],
    # tags written as plain text (rlp.template.tags: text): nothing added, several tokens each
    'text': [*TEXT, 'rlp.template.open_tag=<think>', 'rlp.template.close_tag=</think>'],
    'text-instr': [*TEXT, f'rlp.template.instruction={json.dumps(INSTRUCTION)}'],
    'text-space': [*TEXT, 'rlp.template.open_tag=" <think> "', 'rlp.template.close_tag=" </think> "'],
    'text-nl': [*TEXT, 'rlp.template.open_tag="\\n<think>\\n"', 'rlp.template.close_tag="\\n</think>\\n"'],
    'text-paren': [*TEXT, 'rlp.template.open_tag=" ("', 'rlp.template.close_tag=") "'],
    'text-paren1': [*TEXT, 'rlp.template.open_tag=" ("', 'rlp.template.close_tag=")"'],
    'text-think-paren': [*TEXT, 'rlp.template.open_tag=" (think:"', 'rlp.template.close_tag=")"'],
    'text-line-paren': [*TEXT, 'rlp.template.open_tag="\\n("', 'rlp.template.close_tag=")\\n"'],
}
KEYS = ('rlp/truncation_rate', 'rlp/reward_mean', 'rlp/gain_vs_ema', 'rlp/s_pred', 'rlp/s_ema', 'rlp/thought_len_mean')


def _run(cmd: list[str]) -> None:
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'}
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def prepare() -> None:
    py = sys.executable
    if not (REPO / NOTAGS).is_dir():
        _run([py, '-m', 'rlp.tools.cli', 'pretrained', 'smollm2', '--no-tags', '--out', NOTAGS])
    if not (REPO / DATA).is_dir():
        _run([py, '-m', 'pipeline.synthetic', '--docs', '200', '--seed', '2', '--think-fraction', '0',
              '--out', 'models/data/plain.jsonl'])  # fmt: skip
        _run([py, '-m', 'pipeline.cli', 'prepare', '--input', 'models/data/plain.jsonl', '--tokenizer', NOTAGS,
              '--eos-text', '<|endoftext|>', '--seq-len', '256', '--out', DATA, '--workers', '1'])  # fmt: skip


def train(arm: str, batches: int, out: str) -> None:
    _run([
        sys.executable, '-m', 'rlp.train', 'recipes/smollm2-135m-rlp.yaml', f'variables.model={NOTAGS}',
        f'variables.data_dir=./{DATA}', f'variables.out=./{out}',
        'data.streams.synthetic.allow_tokenizer_mismatch=true', f'trainer.max_duration={batches}ba',
        'trainer.device_train_microbatch_size=2', 'trainer.optimizer.lr=1e-6',  # the rate these figures were taken at
        'trainer.save_folder=null', 'trainer.device=cpu', f'run_name=tags-{arm}', 'loggers.console=false', *ARMS[arm],
    ])  # fmt: skip


def summary(arm: str, batches: int, out: str) -> dict[str, float]:
    rows = [json.loads(line) for line in open(REPO / out / f'tags-{arm}' / 'metrics.jsonl', encoding='utf-8')]
    rows = [r for r in rows if 'rlp/reward_mean' in r][:batches]
    means = {k: sum(r[k] for r in rows) / len(rows) for k in KEYS}
    return {**means, 'positions': sum(r['rlp/positions'] for r in rows), 'batches': len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batches', type=int, default=3)
    parser.add_argument('--arms', default=','.join(ARMS), help='comma-separated, of: ' + ', '.join(ARMS))
    parser.add_argument('--out', default='models/tagruns', help='where the runs go (default: %(default)s)')
    parser.add_argument('--summary-only', action='store_true', help='only summarise runs already in --out')
    args = parser.parse_args()
    arms = args.arms.split(',')
    if not args.summary_only:
        prepare()
        for arm in arms:
            train(arm, args.batches, args.out)
    print(f'{"arm":<14} {"trunc":>6} {"reward":>8} {"gain_ema":>8} {"S_pred":>8} {"S_EMA":>8} {"len":>5} {"pos":>4}')
    for arm in arms:
        s = summary(arm, args.batches, args.out)
        print(
            f'{arm:<14} {s["rlp/truncation_rate"]:6.3f} {s["rlp/reward_mean"]:8.3f} {s["rlp/gain_vs_ema"]:8.3f} '
            f'{s["rlp/s_pred"]:8.3f} {s["rlp/s_ema"]:8.3f} {s["rlp/thought_len_mean"]:5.1f} {s["positions"]:4.0f}'
        )


if __name__ == '__main__':
    main()
