"""The INIT-time teacher (rlp.teacher life cycle) and its FSDP path.

CPU (always run): the teacher allocated at Event.INIT gives bit-identical losses, metrics, weights and teacher to
the former lazy copy at the first batch in a real composer.Trainer; phi = theta at the first batch even when theta
changes between INIT and the first batch; a meta-device skeleton is materialised and synced; the algorithm state
round-trips through torch.distributed.checkpoint laid out as Composer's sharded checkpoints lay it out; FSDP1
FULL_SHARD on 2 gloo CPU ranks (raw FSDP, no Composer): same full teacher on both ranks, phi against the formula.
GPU (``@pytest.mark.gpu``, skipped without CUDA): a 2-step Trainer with FSDP1 on one GPU, the teacher checked
against phi_k = tau*phi_{k-1} + (1-tau)*theta_k computed here from theta gathered after each step.
"""

from __future__ import annotations

import os

import pytest
import torch
from composer import Callback

from rlp.hf import full_params
from rlp.teacher import Teachers
from tests.helpers.rlp_batches import rlp_config, rlp_trainer, series, skipping_batch
from tests.helpers.tiny_models import build_tiny_model, tiny_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='FSDP in Composer needs CUDA')


def _state(module):
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _run(tokenizer, lazy, monkeypatch, callbacks=()):
    with monkeypatch.context() as m:
        if lazy:  # the former behaviour: nothing at INIT, deepcopy of the model at the first batch
            m.setattr(Teachers, 'create', lambda self, model, sharded=False: None)
        trainer, algo, logger, hf = rlp_trainer(
            tokenizer,
            skipping_batch(tokenizer),
            rlp_config(tokenizer),
            duration='3ba',
            optimizer='adam',
            lr=1e-2,
            callbacks=list(callbacks),
        )
        assert (algo.teachers.ema.module is None) == lazy
        trainer.fit()
    return algo, logger, hf


def test_init_copy_bit_identical_to_lazy_copy(tokenizer, monkeypatch):
    """3 Adam steps with the teacher allocated at INIT vs created lazily at the first batch: every logged rlp/ and
    loss series, the model and the EMA teacher are bit-identical (torch.equal / ==)."""
    algo_a, log_a, hf_a = _run(tokenizer, False, monkeypatch)
    algo_b, log_b, hf_b = _run(tokenizer, True, monkeypatch)
    keys = [k for k in log_a.data if k.startswith(('rlp/', 'loss/'))]
    assert 'rlp/s_ema' in keys and 'loss/train/total' in keys
    for k in keys:
        assert series(log_a, k) == series(log_b, k), k
    for (k, a), (_, b) in zip(hf_a.named_parameters(), hf_b.named_parameters()):
        assert torch.equal(a, b), k
    ta, tb = _state(algo_a.teachers.ema.module), _state(algo_b.teachers.ema.module)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert algo_a.teachers.updates == algo_b.teachers.updates == 3
    assert not algo_a.teachers.ema.module.training
    assert not any(p.requires_grad for p in algo_a.teachers.ema.module.parameters())


class _PerturbAtFitStart(Callback):
    """Changes theta after INIT (as FSDP sync_module_states or a weights-only load would) and records, before the
    first forward, whether teacher == model."""

    def __init__(self, algo_ref):
        self.algo_ref = algo_ref
        self.equal_at_first_batch = None

    def fit_start(self, state, logger):
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for p in state.model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)

    def before_forward(self, state, logger):
        if self.equal_at_first_batch is None:
            teacher = self.algo_ref[0].teachers.ema.module.state_dict()
            model = state.model.model.state_dict()
            self.equal_at_first_batch = all(torch.equal(teacher[k], model[k]) for k in teacher)


def test_teacher_equals_theta_at_first_batch_when_theta_changes_after_init(tokenizer):
    """The INIT copy is re-synced phi <- theta at the first batch: equal to the model as it is then."""
    ref = []
    cb = _PerturbAtFitStart(ref)
    trainer, algo, _, _ = rlp_trainer(
        tokenizer, skipping_batch(tokenizer), rlp_config(tokenizer), duration='1ba', callbacks=[cb]
    )
    ref.append(algo)
    assert algo.teachers.ema.module is not None and not algo.teachers.ema.synced
    assert algo.state_dict()['teacher']['ema'] == {}  # nothing to save before the first batch
    trainer.fit()
    assert cb.equal_at_first_batch is True


def test_meta_skeleton_materialised_and_synced():
    """A model built on the meta device gives a meta skeleton at create(); ensure() materialises it on the target
    device and copies theta (parameters AND non-persistent buffers such as rotary inv_freq); restored weights
    pending on a skeleton are applied instead of theta."""
    from transformers import AutoModelForCausalLM

    with torch.device('meta'):
        meta = AutoModelForCausalLM.from_config(tiny_config('llama', 64))
    real = build_tiny_model('llama', 64, seed=3)
    t = Teachers('frozen', 0.5)
    t.create(meta)
    assert all(p.is_meta for p in t.ema.module.parameters())
    t.ensure(real, torch.device('cpu'))
    got = {**dict(t.ema.module.named_parameters()), **dict(t.ema.module.named_buffers())}
    for name, v in list(real.named_parameters()) + list(real.named_buffers()):
        assert torch.equal(got[name], v.detach()), name
    assert any('inv_freq' in n for n, _ in real.named_buffers())
    assert torch.equal(t.frozen.module.lm_head.weight, real.lm_head.weight.detach())
    restored = {k: v + 1.0 for k, v in real.state_dict().items()}
    t2 = Teachers('ema', 0.5)
    t2.create(meta)
    t2.load_state_dict({'ema': restored, 'updates': 4})
    t2.ensure(real, torch.device('cpu'))
    assert all(torch.equal(v, restored[k]) for k, v in t2.ema.module.state_dict().items())
    assert t2.updates == 4


def test_state_round_trips_through_sharded_checkpoint_layout(tokenizer, tmp_path):
    """Composer's sharded checkpoints save state['algorithms'] = [(qualname, algo.state_dict())] with
    torch.distributed.checkpoint (DefaultSavePlanner(dedup_save_to_lowest_rank=True)); the tuple is stored as one
    item, so a fresh algorithm (teacher allocated but not synced, i.e. an EMPTY teacher dict) gets back the exact
    teacher weights and counters."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultSavePlanner

    trainer, algo, _, _ = rlp_trainer(tokenizer, skipping_batch(tokenizer), rlp_config(tokenizer), duration='2ba')
    trainer.fit()
    saved = {'state': {'algorithms': [('RLP', algo.state_dict())]}}
    dcp.save(
        state_dict=saved,
        storage_writer=dcp.FileSystemWriter(str(tmp_path)),
        planner=DefaultSavePlanner(dedup_save_to_lowest_rank=True),
    )
    _, fresh, _, _ = rlp_trainer(tokenizer, skipping_batch(tokenizer), rlp_config(tokenizer), model_seed=4)
    target = {'state': {'algorithms': [('RLP', fresh.state_dict())]}}
    assert target['state']['algorithms'][0][1]['teacher']['ema'] == {}
    dcp.load(state_dict=target, storage_reader=dcp.FileSystemReader(str(tmp_path)))
    fresh.load_state_dict(target['state']['algorithms'][0][1])
    want, got = _state(algo.teachers.ema.module), _state(fresh.teachers.ema.module)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert fresh.teachers.ema.synced and fresh.teachers.updates == 2 and fresh.totals == algo.totals


def _fsdp_cpu_worker(rank, world, port, out_dir):
    import torch.distributed as tdist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    tdist.init_process_group('gloo', rank=rank, world_size=world)
    model = build_tiny_model('llama', 64, seed=0)
    theta0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    teachers = Teachers('ema', 0.25)
    teachers.create(model)  # as at Event.INIT: before wrapping
    wrapped = FSDP(
        model,
        use_orig_params=True,
        device_id=torch.device('cpu'),
        sharding_strategy=ShardingStrategy.FULL_SHARD,
        auto_wrap_policy=ModuleWrapPolicy({LlamaDecoderLayer}),
    )
    local = sum(p.numel() for p in wrapped.parameters())
    teachers.ensure(wrapped, torch.device('cpu'))
    synced = all(torch.equal(v, theta0[k]) for k, v in teachers.ema.module.named_parameters())
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    x = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(rank))
    wrapped(input_ids=x, labels=x).loss.backward()
    opt.step()
    teachers.update(wrapped)
    with full_params(wrapped):
        theta1 = {k.replace('_fsdp_wrapped_module.', ''): v.detach().clone() for k, v in wrapped.named_parameters()}
    torch.save(
        {
            'synced': synced,
            'local': local,
            'full': sum(v.numel() for v in theta0.values()),
            'theta0': theta0,
            'theta1': theta1,
            'teacher': {k: v.clone() for k, v in teachers.ema.module.named_parameters()},
        },
        os.path.join(out_dir, f'rank{rank}.pt'),
    )
    tdist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_full_shard_two_cpu_ranks(tmp_path):
    """FSDP1 FULL_SHARD (use_orig_params) on 2 gloo CPU ranks, the raw teacher path without Composer (whose FSDP
    needs CUDA): each rank holds only a shard, yet both teachers are the same full copy, phi_0 = theta_0 and
    phi_1 = tau*theta_0 + (1-tau)*theta_1 with theta_1 gathered here."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    mp.spawn(_fsdp_cpu_worker, args=(2, port, str(tmp_path)), nprocs=2)
    r0, r1 = torch.load(tmp_path / 'rank0.pt'), torch.load(tmp_path / 'rank1.pt')
    assert r0['local'] < r0['full'] and r1['local'] < r1['full']  # really sharded
    assert r0['synced'] and r1['synced']
    for name, phi in r0['teacher'].items():
        assert torch.equal(phi, r1['teacher'][name]), name
        assert not torch.equal(r0['theta1'][name], r0['theta0'][name]) or 'norm' in name
        want = torch.lerp(r0['theta0'][name], r0['theta1'][name], 0.75)
        torch.testing.assert_close(phi, want, atol=1e-7, rtol=1e-6, msg=name)


# ------------------------------------------------------------------ GPU: FSDP1 on one device
class _RecordTheta(Callback):
    """Full theta (gathered under rlp.teacher.full_params) before the first batch and after every step."""

    def __init__(self):
        self.thetas = []

    def _grab(self, state):
        hf = state.model.model
        with full_params(hf):
            self.thetas.append(
                {
                    k.replace('_fsdp_wrapped_module.', ''): v.detach().float().cpu().clone()
                    for k, v in hf.named_parameters()
                }
            )

    def fit_start(self, state, logger):
        self._grab(state)

    def batch_end(self, state, logger):
        self._grab(state)


def _fsdp_worker(rank, port, out_path, data, cfg_dict, tau):
    os.environ.update(
        RANK='0',
        WORLD_SIZE='1',
        LOCAL_RANK='0',
        LOCAL_WORLD_SIZE='1',
        NODE_RANK='0',
        MASTER_ADDR='127.0.0.1',
        MASTER_PORT=str(port),
    )
    from composer import Trainer
    from composer.loggers import InMemoryLogger
    from composer.models import HuggingFaceModel

    from pipeline.bundled_tokenizer import load_bundled_tokenizer
    from rlp import scoring
    from rlp.config import RLPConfig
    from rlp.run.algorithm import RLP
    from tests.helpers.rlp_batches import CLOSE_ID, VOCAB, Rows, close_biased

    tok = load_bundled_tokenizer()
    hf = close_biased(build_tiny_model('llama', VOCAB, seed=0), CLOSE_ID, 2.0)
    model = HuggingFaceModel(hf, tokenizer=tok, use_logits=True)
    cfg = RLPConfig.from_dict({**cfg_dict, 'teacher': {'kind': 'ema', 'tau': tau}})
    algo, rec = RLP(cfg, seed=11), _RecordTheta()
    loader = torch.utils.data.DataLoader(Rows(data), batch_size=8, shuffle=False)
    trainer = Trainer(
        model=model,
        train_dataloader=loader,
        max_duration='2ba',
        optimizers=torch.optim.Adam(model.parameters(), lr=1e-2),
        algorithms=[algo],
        callbacks=[rec],
        loggers=[InMemoryLogger()],
        device='gpu',
        device_train_microbatch_size=4,
        parallelism_config={
            'fsdp': {'use_orig_params': True, 'sharding_strategy': 'FULL_SHARD', 'mixed_precision': 'FULL'}
        },
        progress_bar=False,
        log_to_console=False,
        seed=3,
    )
    assert algo.teachers.ema.module is not None  # allocated at INIT from the unwrapped module
    trainer.fit()
    teacher = algo.teachers.ema.module
    torch.save(
        {
            'teacher': {k: v.detach().float().cpu() for k, v in teacher.named_parameters()},
            'device': str(next(teacher.parameters()).device),
            'updates': algo.teachers.updates,
            'thetas': rec.thetas,
            'fsdp': type(trainer.state.model.model).__name__,
            'logprob_fallback': sorted(scoring._WARNED),
        },
        out_path,
    )


@pytest.mark.gpu
@needs_cuda
def test_fsdp_one_gpu_teacher_follows_ema_formula(tokenizer, tmp_path):
    """FSDP1 (use_orig_params) on 1 GPU, 2 steps: the teacher is a full copy on the GPU, updated twice, and equals
    phi_2 computed here from the gathered theta_0, theta_1, theta_2 (phi_0 = theta_0); the chunked log-prob path
    ran without falling back."""
    import socket

    import torch.multiprocessing as mp

    tau = 0.5
    out = tmp_path / 'fsdp.pt'
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    mp.spawn(
        _fsdp_worker, args=(port, str(out), skipping_batch(tokenizer), rlp_config(tokenizer).to_dict(), tau), nprocs=1
    )
    res = torch.load(out)
    assert res['fsdp'] == 'FullyShardedDataParallel' and res['device'].startswith('cuda')
    assert res['updates'] == 2 and len(res['thetas']) == 3
    assert res['logprob_fallback'] == []  # the chunked log-prob path ran under FSDP
    th = res['thetas']
    assert any(not torch.equal(th[0][k], th[2][k]) for k in th[0])  # the model did train
    for name, phi in res['teacher'].items():
        want = th[0][name]
        for k in (1, 2):
            want = tau * want + (1 - tau) * th[k][name]
        torch.testing.assert_close(phi, want, atol=1e-6, rtol=1e-5, msg=name)
