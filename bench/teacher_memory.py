"""Peak resident memory per rank of the EMA teacher under FSDP2: sharded like the policy vs a full fp32 copy.

Two gloo CPU ranks per setting (each setting in fresh processes, since peak RSS only grows). Each rank builds the
policy (a random-init Llama, fp32), shards it with ``fully_shard`` (one unit per decoder layer plus the root, as
Composer does), then runs what the teacher costs: create the copy, sync phi <- theta, one EMA update and one no-think
forward of the teacher on a (4, 256) batch.

- ``full``: the copy a rank held before this path (a deepcopy of the unwrapped model at INIT, fp32), synced and
  updated from theta gathered one tensor at a time (``DTensor.full_tensor``; FSDP1's ``summon_full_params`` gathered
  every tensor at once, so this is a lower bound for it);
- ``sharded``: :class:`rlp.teacher.Teachers` with ``sharded=True`` (meta copy, ``fully_shard`` like the policy,
  updates on local shards, forward all-gathers one unit at a time).

Printed per setting and rank: the teacher's weights held by the rank; the RSS before the teacher's steps (the
sharded copy's pages are allocated but not yet touched, so they are not resident yet); the peak RSS (``VmHWM``,
reset just before the steps) after sync + update (the teacher resident) and after its forward too; the process's
lifetime peak (``ru_maxrss``, dominated by building the unsharded policy on every rank); the ratios sharded / full.
On CPU, freed gather buffers stay in the process (glibc's heap), so the forward's peak overstates what a GPU's
caching allocator would hold.

Usage: ``python bench/teacher_memory.py [--hidden 768] [--layers 12] [--vocab 32000]``
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
import tempfile

import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _status_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, from /proc/self/status."""
    with open('/proc/self/status') as fh:
        for line in fh:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f'{field} not in /proc/self/status')


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    with open('/proc/self/clear_refs', 'w') as fh:
        fh.write('5')


def _worker(rank: int, world: int, port: int, mode: str, args: argparse.Namespace, out: str) -> None:
    import torch.distributed as tdist
    from torch.distributed.fsdp import fully_shard
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlp.teacher import Teachers

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    tdist.init_process_group('gloo', rank=rank, world_size=world)
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    policy = LlamaForCausalLM(cfg)
    full_mib = sum(p.numel() for p in policy.parameters()) * 4 / 2**20
    teachers = Teachers('ema', 0.999)
    if mode == 'full':  # created at INIT from the unwrapped model, as before this path
        teachers.create(policy)
    else:
        teachers.create(policy, sharded=True)
    for layer in policy.model.layers:
        fully_shard(layer)
    fully_shard(policy)
    if mode == 'sharded':
        teachers.shard(policy)  # allocates the local shards (the full copy above was allocated at create)
    ids = torch.randint(0, args.vocab, (4, 256), generator=torch.Generator().manual_seed(rank))
    tdist.barrier()
    _reset_peak()
    before = _status_mib('VmRSS')
    with torch.no_grad():
        if mode == 'full':
            phi = dict(teachers.ema.module.named_parameters())
            for tau in (None, 0.999):
                for name, theta in policy.named_parameters():
                    full = theta.full_tensor()
                    phi[name].copy_(full) if tau is None else phi[name].lerp_(full, 1 - tau)
                    del full
            steady = _status_mib('VmHWM')
            teachers.ema.module(input_ids=ids, logits_to_keep=1)
        else:
            teachers.ensure(policy)
            teachers.update(policy)
            steady = _status_mib('VmHWM')
            teachers.ema.module(input_ids=ids, logits_to_keep=1)
            from rlp.sharded import reshard

            reshard(teachers.ema.module)
    after = _status_mib('VmHWM')
    held = sum(getattr(p, '_local_tensor', p).numel() * 4 for p in teachers.ema.module.parameters()) / 2**20
    res = {'before': before, 'steady': steady, 'after': after, 'model_mib': full_mib, 'held': held}
    res['life'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    torch.save(res, os.path.join(out, f'{mode}{rank}.pt'))
    tdist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--hidden', type=int, default=768)
    parser.add_argument('--layers', type=int, default=12)
    parser.add_argument('--vocab', type=int, default=32000)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as out:
        for mode in ('full', 'sharded'):
            with socket.socket() as sock:
                sock.bind(('127.0.0.1', 0))
                port = sock.getsockname()[1]
            mp.spawn(_worker, args=(2, port, mode, args, out), nprocs=2)
            results[mode] = [torch.load(os.path.join(out, f'{mode}{r}.pt')) for r in range(2)]
    model_mib = results['full'][0]['model_mib']
    print(f'model: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}: fp32 size {model_mib:.0f} MiB')
    print(
        '| teacher | rank | teacher weights held (MiB) | RSS before the teacher steps (MiB) '
        '| peak RSS over sync + update (MiB) | peak RSS with the forward (MiB) | peak RSS of the whole process (MiB) |'
    )
    print('|---|---:|---:|---:|---:|---:|---:|')
    for mode, ranks in results.items():
        for r, res in enumerate(ranks):
            print(
                f'| {mode} | {r} | {res["held"]:.0f} | {res["before"]:.0f} | {res["steady"]:.0f} | {res["after"]:.0f} '
                f'| {res["life"]:.0f} |'
            )
    for r in range(2):
        full, shard = results['full'][r], results['sharded'][r]
        print(
            f'rank {r}: sharded / full: weights held {shard["held"] / full["held"]:.2f}, peak over sync + update '
            f'{shard["steady"] / full["steady"]:.2f}, peak with the forward {shard["after"] / full["after"]:.2f}'
        )


if __name__ == '__main__':
    main()
