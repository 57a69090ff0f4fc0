"""RLP steps of a SmolLM2-135M-shaped model on one CUDA GPU in bf16: time and peak memory from the recipe's thought
budget up to the paper's (needs a GPU; not run in CI).

    python bench/gpu_smollm2.py --model-dir DIR [--settings 4x32,16x256,16x1024,16x2048] [--steps 3]

``DIR`` holds SmolLM2's ``config.json`` and tokenizer (``models/smollm2-135m`` after ``make smollm2``; the weights are
not read). The model is built from that config with random weights (134.5M parameters, vocabulary 49,152), fp32
master weights, ``torch.autocast`` bf16, sdpa attention, AdamW, the EMA teacher: the plain-PyTorch loop of
``rlp.step.rlp_loss``, as a GPU recipe run computes it (``trainer.precision: amp_bf16``). Random weights never sample
the closing tag, so every thought runs to the budget: the figures are the worst case of each setting. Batch: 2 rows
of 2048 tokens of the plain synthetic word problems, 4 answer positions per row (8 positions), G thoughts each of
at most T tokens (``--settings`` GxT). Per setting, after one warm-up step: the mean seconds of a step, the split
(rollout / teacher / policy forward + backward / rest) and the peak GPU memory of a step
(``torch.cuda.max_memory_allocated`` minus the memory held before it: weights, AdamW state, EMA teacher).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.synthetic import generate_documents  # noqa: E402
from rlp.config import RLPConfig, TemplateConfig  # noqa: E402
from rlp.step import rlp_loss  # noqa: E402
from rlp.teacher import Teachers  # noqa: E402
from rlp.template import resolve_template  # noqa: E402
from rlp.timing import StepTimer  # noqa: E402

ROWS, ROW_LEN, PER_ROW = 2, 2048, 4
DEVICE = 'cuda'


def _batch(tokenizer) -> dict[str, torch.Tensor]:
    ids, seg, d = [], [], 0
    for doc in generate_documents(ROWS * 60, seed=2, think_fraction=0.0):
        toks = tokenizer(doc, add_special_tokens=False)['input_ids'] + [tokenizer.eos_token_id]
        ids, seg, d = ids + toks, seg + [d] * len(toks), d + 1
        if len(ids) >= ROWS * ROW_LEN:
            break
    x = torch.tensor(ids[: ROWS * ROW_LEN]).view(ROWS, ROW_LEN)
    s = torch.tensor(seg[: ROWS * ROW_LEN]).view(ROWS, ROW_LEN)
    batch = {'input_ids': x, 'labels': x.clone(), 'attention_mask': torch.ones_like(x), 'segment_ids': s - s[:, :1],
             'sample_id': torch.arange(ROWS)}  # fmt: skip
    return {k: v.to(DEVICE) for k, v in batch.items()}


def _sync() -> None:
    if DEVICE == 'cuda':
        torch.cuda.synchronize()


def _setting(model_dir: str, g: int, t: int, steps: int) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_dir, attn_implementation='sdpa')
    model = AutoModelForCausalLM.from_config(config).to(DEVICE).train()
    template_cfg = TemplateConfig()
    template = resolve_template(tokenizer, template_cfg, model, [' = ', ' make '])
    cfg = RLPConfig.from_dict({
        'positions': {'strategy': 'after', 'after': [' = ', ' make '], 'unit': 'sample', 'k': PER_ROW,
                      'min_context': 8},
        'rollouts': {'group_size': g, 'max_thought_tokens': t, 'temperature': 0.7},
    })  # fmt: skip
    teachers = Teachers('ema', 0.999)
    teachers.ensure(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.95), weight_decay=0.0)
    batch = _batch(tokenizer)
    times, parts, peaks, positions, lengths = [], [], [], [], []
    for i in range(steps + 1):
        timer = StepTimer()
        _sync()
        if DEVICE == 'cuda':
            torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated() if DEVICE == 'cuda' else 0
        start = time.perf_counter()
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss, stats = rlp_loss(model, teachers, batch, cfg, template, key=(0, i), timer=timer)
        with timer('backward'):
            loss.backward()
        with timer('optimizer'):
            opt.step()
            opt.zero_grad(set_to_none=True)
            teachers.update(model)
        _sync()
        if i == 0:
            continue  # warm-up: kernels chosen, allocator grown
        times.append(time.perf_counter() - start)
        s = timer.seconds
        parts.append({'rollout': s['rollout'], 'teacher': s['teacher'],
                      'policy fwd+bwd': s['policy_forward'] + s['backward']})  # fmt: skip
        peaks.append((torch.cuda.max_memory_allocated() - held) / 2**30 if DEVICE == 'cuda' else float('nan'))
        metrics = stats.metrics()
        positions.append(metrics['rlp/positions'])
        lengths.append(metrics['rlp/thought_len_mean'])
    mean = lambda xs: sum(xs) / len(xs)
    split = {k: mean([p[k] for p in parts]) for k in parts[0]}
    return {'G': g, 'T': t, 'step_s': mean(times), 'split_s': split, 'peak_step_gib': max(peaks),
            'held_gib': held / 2**30, 'positions': mean(positions), 'thought_len': mean(lengths)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model-dir', required=True, help="folder with SmolLM2's config.json and tokenizer")
    parser.add_argument('--settings', default='4x32,16x256,16x1024,16x2048', help='GxT pairs (default: %(default)s)')
    parser.add_argument('--steps', type=int, default=3, help='timed steps per setting after one warm-up')
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--cpu-smoke', action='store_true', help='run on the CPU (checks the script; no memory figure)')
    args = parser.parse_args()
    global DEVICE
    DEVICE = 'cpu' if args.cpu_smoke else 'cuda'
    if DEVICE == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('gpu_smollm2: needs a CUDA GPU (--cpu-smoke checks the script on the CPU)')
    print(f'{torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU"}; torch {torch.__version__}')
    results = []
    for pair in args.settings.split(','):
        g, t = (int(v) for v in pair.split('x'))
        r = _setting(args.model_dir, g, t, args.steps)
        results.append(r)
        split = ', '.join(f'{k} {v:.2f}' for k, v in r['split_s'].items())
        print(f'G {g:3d} T {t:5d}: step {r["step_s"]:.2f} s ({split}); peak {r["peak_step_gib"]:.1f} GiB over '
              f'{r["held_gib"]:.1f} GiB held; {r["positions"]:.0f} positions, thought {r["thought_len"]:.0f} tokens',
              flush=True)  # fmt: skip
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
