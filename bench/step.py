"""One full RLP step through the functional step (``rlp.step.rlp_loss`` + backward), split into its parts.

    python bench/step.py [--threads 2] [--repeats 3] [--positions 1] [--quick]

Model: a random-init Llama (hidden 512, 6 layers, 8 heads, 32k vocabulary, sdpa attention; ~23M parameters with
tied embeddings), fp32, train mode, SGD; the EMA teacher. Batch: ``--positions`` rows of 1024 tokens (one document
each), one position per row with a 512-token prefix; G 16 thoughts of 128 tokens (the closing tag's head bias is
-1e4, so no thought closes early and every thought is truncated at the budget). ``--quick``: prefix 128, 32 thought
tokens, rows of 256 tokens (< 1 minute).

A step = ``rlp_loss`` (timed by parts with :class:`rlp.timing.StepTimer`) + ``loss.backward()`` + the next-token
loss forward and backward on the same batch (what Composer runs when ``ntp_weight > 0``; with the paper's
``ntp_weight: 0`` it is a 2-token stub) + optimizer step and EMA update. Printed:

1. the split of the packed step (best of ``--repeats`` by total): rollout, teacher, policy forward + backward, NTP,
   everything else (positions and prompts, objective and statistics, optimizer step, EMA update); goal: else <= 10%;
2. the tokens the training forward runs over (packed rows R x W, padding included) against the naive
   G x (prefix + thought) and the goal (L + G T) / (G (L + T)); the unpacked path's own count beside it;
3. the packed step's time against the unpacked one's (``rlp.loss.packed_forward_tokens: null``), both in this run;
4. the peak memory of a step: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the peak RSS during one step
   (reset through ``/proc/self/clear_refs`` after the set-up) minus the RSS before it, in a fresh child process per
   path (freed memory stays with the allocator, so one process cannot measure two paths).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlp.config import RLPConfig
from rlp.packing import pack_rows
from rlp.positions import Positions
from rlp.rollouts import Rollouts, build_prompts
from rlp.step import rlp_loss
from rlp.teacher import Teachers
from rlp.template import ThoughtTemplate
from rlp.timing import StepTimer

VOCAB, OPEN_ID, CLOSE_ID, EOS_ID = 32000, 3, 4, 2
PARTS = ('rollout', 'teacher', 'policy fwd+bwd', 'NTP fwd+bwd', 'else')


def _setting(quick: bool) -> tuple[int, int, int, int]:
    """(prefix L, thought tokens T, G, row length)."""
    return (128, 32, 16, 256) if quick else (512, 128, 16, 1024)


def _model(device: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048,
                      tie_word_embeddings=True, attn_implementation='sdpa')  # fmt: skip
    model = LlamaForCausalLM(cfg)
    old = model.lm_head  # a plain Linear head with a bias: the closing tag's logit -1e4 (never sampled)
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    head.weight = old.weight
    with torch.no_grad():
        head.bias.zero_()
        head.bias[CLOSE_ID] = -1e4
    model.lm_head = head
    return model.to(device).train()


def _setup(args, packed: bool):
    prefix, tokens, g, row_len = _setting(args.quick)
    model = _model(args.device)
    teachers = Teachers('ema', 0.999)
    teachers.ensure(model)
    cfg = RLPConfig.from_dict({
        'positions': {'k': 1, 'min_context': prefix, 'max_context': prefix},
        'rollouts': {'group_size': g, 'max_thought_tokens': tokens, 'temperature': 0.7},
        'loss': {'packed_forward_tokens': 4096 if packed else None},
    })  # fmt: skip
    template = ThoughtTemplate(open_ids=(OPEN_ID,), close_ids=(CLOSE_ID,), eos_id=EOS_ID, pad_id=0)
    ids = torch.randint(10, VOCAB, (args.positions, row_len), generator=torch.Generator().manual_seed(1))
    batch = {
        'input_ids': ids.to(args.device),
        'labels': ids.to(args.device),
        'attention_mask': torch.ones_like(ids).to(args.device),
        'segment_ids': torch.zeros_like(ids).to(args.device),
        'sample_id': torch.arange(args.positions).to(args.device),
    }
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    return model, teachers, cfg, template, batch, opt


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _step(model, teachers, cfg, template, batch, opt, i: int) -> tuple[dict[str, float], float, object]:
    """One step; returns (seconds per part, total seconds, stats)."""
    timer = StepTimer()
    _sync()
    start = time.perf_counter()
    loss, stats = rlp_loss(model, teachers, batch, cfg, template, key=(0, i), keep_samples=True, timer=timer)
    with timer('backward'):
        loss.backward()
    with timer('ntp'):
        ntp = model(input_ids=batch['input_ids'], labels=batch['labels'], use_cache=False).loss
        ntp.backward()
    with timer('optimizer'):
        opt.step()
        opt.zero_grad(set_to_none=True)
        teachers.update(model)
    _sync()
    total = time.perf_counter() - start
    s = timer.seconds
    parts = {
        'rollout': s['rollout'],
        'teacher': s['teacher'],
        'policy fwd+bwd': s['policy_forward'] + s['backward'],
        'NTP fwd+bwd': s['ntp'],
    }
    parts['else'] = total - sum(parts.values())
    parts['  positions+prompts'] = s['positions']
    parts['  objective+stats'] = s['objective']
    parts['  optimizer+EMA'] = s['optimizer']
    return parts, total, stats


def _tokens(batch, cfg, template, stats, g: int) -> tuple[int, int]:
    """(packed rows' positions R x W, the unpacked path's N x (Lp + T + 1)) for the step's own rollouts."""
    smp = stats.samples
    pos = Positions(row=smp.row, target=smp.target, start=smp.start, num_rows=0, rows_without_position=0)
    prompts = build_prompts(batch['input_ids'].cpu(), pos, template, 0)
    valid = torch.arange(smp.tokens.shape[-1]) < smp.lengths.unsqueeze(-1)
    ro = Rollouts(smp.tokens, smp.tokens.float(), valid, smp.lengths, smp.truncated, smp.s_ema, 0)
    packed = pack_rows(prompts, ro, 0, cfg.loss.packed_forward_tokens or 4096).tokens
    unpacked = smp.tokens.shape[0] * g * (prompts.ids.shape[1] + smp.tokens.shape[-1] + 1)
    return packed, unpacked


def _status_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ':'))


def _memory_child(args, packed: bool) -> float:
    """MiB of peak memory of one step (run in this process; see the module docstring)."""
    model, teachers, cfg, template, batch, opt = _setup(args, packed)
    if args.device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _step(model, teachers, cfg, template, batch, opt, 0)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:  # Linux >= 4.0: '5' resets the peak RSS (VmHWM) to the current RSS
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        base = _status_kib('VmRSS')
        _step(model, teachers, cfg, template, batch, opt, 0)
        return (_status_kib('VmHWM') - base) / 1024
    except OSError:  # no reset: the growth of the max RSS since the start of the process (a lower bound)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _step(model, teachers, cfg, template, batch, opt, 0)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024  # Linux: KiB


def _peak_mib(args, packed: bool) -> float:
    cmd = [sys.executable, __file__, '--memory-child', 'packed' if packed else 'unpacked', '--threads',
           str(args.threads), '--positions', str(args.positions), '--device', args.device]  # fmt: skip
    cmd += ['--quick'] if args.quick else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])['peak_mib'])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--positions', type=int, default=1, help='positions per step (rows of the batch)')
    parser.add_argument('--quick', action='store_true', help='prefix 128, 32 thought tokens (< 1 minute)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--memory-child', choices=['packed', 'unpacked'], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps({'peak_mib': _memory_child(args, args.memory_child == 'packed')}))
        return 0
    prefix, tokens, g, _ = _setting(args.quick)
    where = torch.cuda.get_device_name() if args.device == 'cuda' else platform.processor() or platform.machine()
    print(f'{where}, {args.threads} threads, torch {torch.__version__}; {args.positions} position(s), G {g}, '
          f'prefix {prefix}, {tokens} thought tokens, best of {args.repeats}')  # fmt: skip
    best: dict[bool, tuple[float, dict[str, float], object]] = {}
    for packed in (True, False):
        model, teachers, cfg, template, batch, opt = _setup(args, packed)
        if args.repeats > 1:
            _step(model, teachers, cfg, template, batch, opt, 0)  # warm-up (skipped with --repeats 1)
        for i in range(args.repeats):
            parts, total, stats = _step(model, teachers, cfg, template, batch, opt, i + 1)
            if packed not in best or total < best[packed][0]:
                best[packed] = (total, parts, stats)
    total, parts, stats = best[True]
    print(f'\npacked step, {total:.2f} s (thought length mean {stats.length / stats.rollouts:.1f}, '
          f'truncated {stats.truncated / stats.rollouts:.0%})')  # fmt: skip
    print(f'{"part":<22}{"seconds":>9}{"share":>8}')
    for name, sec in parts.items():
        print(f'{name:<22}{sec:9.3f}{sec / total:8.1%}')
    verdict = 'met' if parts['else'] <= 0.1 * total else 'NOT met'
    print(f'everything else {parts["else"] / total:.1%} of the step (goal <= 10%: {verdict})')

    packed_tok, unpacked_tok = _tokens(batch, cfg, template, stats, g)
    p = stats.positions
    naive = p * g * (prefix + tokens)
    goal = (prefix + g * tokens) / (g * (prefix + tokens))
    tags = (prefix + 1 + g * (tokens + 1)) / (g * (prefix + tokens + 2))  # + <think>, + the closing tag
    print(f'\ntraining-forward tokens: packed {packed_tok} = {packed_tok / naive:.3f} of naive G(L+T) = {naive:.0f} '
          f'(goal <= {goal:.3f}; {tags:.3f} with the two tags counted); '
          f'unpacked path {unpacked_tok} = {unpacked_tok / naive:.3f}')  # fmt: skip
    u_total, u_parts, _ = best[False]
    fb, u_fb = parts['policy fwd+bwd'], u_parts['policy fwd+bwd']
    print(f'packed vs unpacked: step {total:.2f} s vs {u_total:.2f} s = {total / u_total:.2f}x; '
          f'policy fwd+bwd {fb:.2f} s vs {u_fb:.2f} s = {fb / u_fb:.2f}x')  # fmt: skip
    mem = {packed: _peak_mib(args, packed) for packed in (True, False)}
    kind = 'torch.cuda.max_memory_allocated' if args.device == 'cuda' else 'peak RSS over the RSS before the step'
    print(f'peak memory of a step ({kind}): packed {mem[True]:.0f} MiB, unpacked {mem[False]:.0f} MiB')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
