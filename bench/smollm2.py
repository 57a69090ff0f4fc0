"""RLP on a real pretrained model: RLP, RLP + next-token loss and FLOP-matched CPT from SmolLM2-135M (not run in CI).

    make smollm2
    python bench/smollm2.py [--steps 120] [--lr 1e-5] [--positions 64] [--jobs 2] [--out study/smollm2]

Every arm starts from ``models/smollm2-135m`` and reads the plain word problems of ``models/smollm2-plain`` (what
``make smollm2`` writes); the recipes are ``recipes/smollm2-135m-{rlp,rlp-ntp,cpt}.yaml`` with the learning rate and
step count given here. The two RLP arms train ``--steps`` batches side by side; CPT then trains as many next-token
batches as the RLP run's counted FLOPs buy. The base and every trained model are evaluated with ``rlp eval`` at the
answer positions (the recipe's ``rlp.positions.after`` texts) of held-out problems (seed 1, never trained on) and of
the training problems, with the same positions and thought draws for every model (evaluation seed 0), thoughts as in
training (G 4, at most 32 tokens, temperature 0.7). Runs go side by side (:mod:`rlp.tools.jobs`; logs in
``<out>/logs``); the tables and the paired differences are printed at the end and written to ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlp.tools.demo import cpt_flops_per_batch, last_record, matched_batches, table, verdict  # noqa: E402
from rlp.tools.jobs import JobFailed, Lanes  # noqa: E402

PY = sys.executable
BASE = 'models/smollm2-135m'
TRAIN = 'models/smollm2-plain'
ARMS = {'rlp': 'smollm2-135m-rlp', 'rlp+ntp': 'smollm2-135m-rlp-ntp', 'cpt': 'smollm2-135m-cpt'}
ANSWERS = ['--after', ' = ', '--after', ' make ']  # the recipe's rlp.positions.after
THOUGHTS = ['--group-size', '4', '--max-thought-tokens', '32', '--temperature', '0.7']  # as in the recipe
ROWS_PER_BATCH, SEQ_LEN = 2, 256  # the recipe's global_train_batch_size and data.seq_len


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--steps', type=int, default=120, help='batches of each RLP arm (default: %(default)s)')
    parser.add_argument('--lr', type=float, default=1e-5, help='learning rate of every arm (default: %(default)s)')
    parser.add_argument('--positions', type=int, default=64, help='answer positions evaluated per set')
    parser.add_argument('--heldout', type=int, default=300, help='held-out documents (default: %(default)s)')
    parser.add_argument('--jobs', type=int, default=2, help='commands at once (default: %(default)s)')
    parser.add_argument('--out', type=Path, default=ROOT / 'study' / 'smollm2')
    args = parser.parse_args()
    if not (ROOT / BASE / 'config.json').is_file() or not (ROOT / TRAIN / 'index.json').is_file():
        raise SystemExit(f'smollm2 study: {BASE} or {TRAIN} is missing; run `make smollm2` first')
    out = args.out.resolve()
    rel = lambda p: str(Path(p).resolve().relative_to(ROOT))
    lanes = Lanes(args.jobs, out / 'logs', ROOT)
    started = time.monotonic()
    heldout = out / 'heldout'
    if not (heldout / 'index.json').is_file():
        lanes.run('heldout-docs', [PY, '-m', 'pipeline.synthetic', '--docs', str(args.heldout), '--seed', '1',
                                   '--think-fraction', '0', '--out', rel(out / 'heldout.jsonl')])  # fmt: skip
        lanes.run('heldout-prepare', [PY, '-m', 'pipeline.cli', 'prepare', '--input', rel(out / 'heldout.jsonl'),
                                      '--tokenizer', BASE, '--eos-text', '<|endoftext|>', '--seq-len', str(SEQ_LEN),
                                      '--out', rel(heldout), '--workers', '1', '--overwrite'])  # fmt: skip
    sets = {'heldout': rel(heldout), 'train': TRAIN}
    common = [f'variables.model={BASE}', f'variables.data_dir={TRAIN}', f'trainer.optimizer.lr={args.lr}',
              'data.clean_stale_shared_memory=false', 'loggers.console_interval=5ba']  # fmt: skip
    results: dict[str, dict[str, dict]] = {s: {} for s in sets}
    flops, wall = {}, {}
    rlp_done = threading.Event()

    def evaluate(name: str) -> None:
        model = BASE if name == 'base' else rel(out / 'hf' / ARMS[name])
        for split, data in sets.items():
            path = out / 'eval' / f'{name}-{split}.json'
            if not path.is_file():
                lanes.run(f'eval-{name}-{split}', [PY, '-m', 'rlp.tools.cli', 'eval', '--model', model, '--data', data,
                          '--baseline', BASE, '--positions', str(args.positions), *ANSWERS, *THOUGHTS,
                          '--json', rel(path)])  # fmt: skip
            results[split][name] = json.loads(path.read_text())

    def arm_lane(arm: str) -> None:
        run = out / ARMS[arm]
        steps = args.steps
        if arm == 'cpt':
            rlp_done.wait()
            if 'rlp' not in flops:
                return
            per_batch = cpt_flops_per_batch(BASE, rows=ROWS_PER_BATCH, seq_len=SEQ_LEN)
            steps = matched_batches(flops['rlp'], per_batch)
            print(f'[cpt] matched to RLP: {flops["rlp"]:.3g} FLOPs / {per_batch:.3g} per batch = {steps} batches')
        cmd = [PY, '-m', 'rlp.train', f'recipes/{ARMS[arm]}.yaml', *common, f'trainer.max_duration={steps}ba',
               f'trainer.save_interval={steps}ba', f'trainer.output_dir={rel(run)}',
               f'trainer.save_folder={rel(run)}/checkpoints']  # fmt: skip
        try:
            if not (run / 'metrics.jsonl').is_file() or int(last_record(run)['batch']) + 1 < steps:
                wall[arm] = lanes.run(f'train-{arm}', cmd)
            flops[arm] = float(last_record(run)['throughput/flops_total'])
        finally:
            if arm == 'rlp':
                rlp_done.set()
        hf = out / 'hf' / ARMS[arm]
        if not (hf / 'config.json').is_file():
            lanes.run(f'export-{arm}', [PY, '-m', 'rlp.tools.cli', 'export', rel(run / 'checkpoints'), rel(hf),
                                        '--overwrite'])  # fmt: skip
        evaluate(arm)

    def after(lane, delay: float = 0.0, event: threading.Event | None = None) -> None:
        # streaming refuses two datasets that open the same local folder at the same instant: stagger the starts
        time.sleep(delay)
        if event is not None:
            event.wait()
        lane()

    try:
        lanes.lanes(
            functools.partial(arm_lane, 'rlp'),
            functools.partial(after, functools.partial(arm_lane, 'rlp+ntp'), 30.0),
            functools.partial(arm_lane, 'cpt'),
            functools.partial(after, functools.partial(evaluate, 'base'), event=rlp_done),
        )
    except JobFailed as err:
        print(f'smollm2 study: {err}', file=sys.stderr)
        return err.code
    extra = {
        'train FLOPs': {a: f'{flops[a]:.3g}' for a in flops},
        'FLOPs / RLP': {a: f'{flops[a] / flops["rlp"]:.2f}x' for a in flops},
        'train wall (s)': {a: f'{wall[a]:.0f}' for a in wall},
    }
    summary = {'steps': args.steps, 'lr': args.lr, 'positions': args.positions, 'flops': flops, 'wall': wall}
    for split in sets:
        res = {n: results[split][n] for n in ('base', *ARMS) if n in results[split]}
        print(f'\n== SmolLM2-135M, {split} answer positions ({args.positions}), G 4; nats; [95% interval]')
        print(table(res, extra))
        lines = verdict(res)
        for line in lines:
            print('  ' + line)
        summary[split] = {'table': table(res, extra), 'verdict': lines}
    (out / 'summary.json').write_text(json.dumps(summary, indent=1))
    print(f'\ntotal {time.monotonic() - started:.0f}s; logs in {rel(out / "logs")}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
