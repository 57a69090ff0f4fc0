"""FSDP2 (``trainer.fsdp``) for real: ``composer -n 2`` on gloo CPU ranks, the same code path as on GPUs.

Every run here trains a tiny model with RLP mixed with NTP (G 2, 3-token thoughts, EMA teacher tau 0.9) on a local
MDS stream for 4 batches of 4 rows, microbatches of 1 row (2 accumulated microbatches per rank per step), SGD lr 0.5.
Checked against independent references:

- FSDP2 against DDP (the unsharded run: each rank holds the full model), tiny Llama and tiny Qwen3: the same global
  batches, per-batch losses and scores within 1e-5, weights after 4 steps within 1e-6 (the sums of the gradient
  reduction run in another order; measured on the tiny Llama: 4.8e-7 and 6e-8, for updates of up to 0.05);
- the sharded EMA teacher after 4 steps against the closed form phi_K = tau^K theta_0 + sum_k (1 - tau)
  tau^(K-k) theta_k, with theta_0 rebuilt here from the recipe's seed and theta_1..theta_4 from the DDP run's
  checkpoints;
- a run SIGKILLed between two sharded checkpoints (local folder; S3 server) and started again with the same command
  against the uninterrupted run: per-batch metrics bitwise, final policy and teacher bitwise (export digests);
- ``rlp export`` of a sharded checkpoint: ``from_pretrained`` gives logits identical (torch.equal) to the model
  holding the checkpoint's weights as read by torch.distributed.checkpoint's own loader, for the policy and the EMA.
"""

from __future__ import annotations

import json
import os
import signal
import time

import boto3
import pytest
import torch

from rlp.run.metrics import read_metrics
from tests.helpers.hooks import HANG_AFTER_BATCH, hook_env
from tests.helpers.s3_outage import s3_env
from tests.helpers.training import (
    COMPARED,
    REPO,
    TINY_LLAMA,
    TINY_RLP,
    environ,
    launch,
    packed_samples,
    rank_logs,
    tiny_recipe,
    write_mds,
    write_recipe,
)

pytestmark = pytest.mark.slow

TINY_QWEN3 = {**TINY_LLAMA, 'model_type': 'qwen3', 'head_dim': 8}
MODELS = {'llama': TINY_LLAMA, 'qwen3': TINY_QWEN3}
BATCHES = 4
TAU = TINY_RLP['teacher']['tau']


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """A local MDS stream (32 packed samples of 32 tokens) and a cache of finished runs."""
    root = tmp_path_factory.mktemp('fsdp')
    write_mds(str(root / 'data' / 'train'), packed_samples(32, 32, seed=5))
    return {'root': root, 'runs': {}}


def _recipe(world, name, kind, fsdp, save_folder, save_interval='1ba'):
    cwd = world['root'] / name
    cwd.mkdir()
    recipe = tiny_recipe(
        streams={'web': {'local': str(world['root'] / 'data'), 'split': 'train'}},
        run_name='fsdp',
        max_duration=f'{BATCHES}ba',
        save_interval=save_interval,
        microbatch=1,
        save_folder=save_folder if save_folder is not None else str(cwd / 'ckpt'),
        rlp=TINY_RLP,
    )
    recipe['model']['config'] = dict(MODELS[kind])
    recipe['trainer']['optimizer'] = {'name': 'sgd', 'lr': 0.5}
    if fsdp:
        recipe['trainer']['fsdp'] = {}
    return cwd, write_recipe(cwd / 'recipe.yaml', recipe)


def _records(cwd):
    records = read_metrics(str(cwd / 'runs' / 'fsdp' / 'metrics.jsonl'))
    assert sorted(records) == list(range(BATCHES)), f'batches recorded: {sorted(records)}\n{rank_logs(cwd)}'
    return records


def _run(world, kind, fsdp):
    """The finished 2-rank run (cached): ``(cwd, records)``; checkpoints after every batch in ``cwd/ckpt``."""
    key = (kind, fsdp)
    if key not in world['runs']:
        cwd, recipe = _recipe(world, f'{kind}-{"fsdp" if fsdp else "ddp"}', kind, fsdp, None)
        proc = launch(recipe, nproc=2, cwd=cwd)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + rank_logs(cwd)
        world['runs'][key] = (cwd, _records(cwd))
    return world['runs'][key]


def _sharded_state(folder):
    """The policy and the EMA teacher (HF keys, whole tensors) of a sharded checkpoint, read with
    torch.distributed.checkpoint's loader (independent of ``rlp export``)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    st = _load_state_dict_from_keys({'state.model', 'state.callbacks'}, storage_reader=dcp.FileSystemReader(folder))
    st = st['state']
    policy = {k[len('model.') :]: v for k, v in st['model'].items()}
    return policy, dict(st['callbacks']['TeacherShards']['ema'])


def _monolithic_state(path):
    st = torch.load(path, map_location='cpu', weights_only=False)['state']
    policy = {k[len('model.') :]: v for k, v in st['model'].items()}
    rlp = next(sd for name, sd in st['algorithms'] if name == 'RLP')
    return policy, rlp['teacher']['ema']


def _theta0(cwd):
    """The initial weights, rebuilt from the run's recipe (seeded init) as rlp.train builds them."""
    from rlp.run.models import build_composer_model
    from rlp.run.recipe import load_recipe

    recipe = load_recipe(str(cwd / 'recipe.yaml'))
    model, _ = build_composer_model(recipe.model, recipe.tokenizer, seed=recipe.seed)
    return {k: v.detach().clone() for k, v in model.model.state_dict().items()}


@pytest.mark.parametrize('kind', ['llama', 'qwen3'])
def test_fsdp2_training_equals_ddp(world, kind):
    """FSDP2 vs DDP on 2 gloo ranks: the weights are DTensor shards (each rank writes its own .distcp), yet the
    losses, scores and weights follow the unsharded run; the sharded EMA teacher equals the closed form."""
    ddp_cwd, ddp = _run(world, kind, False)
    fsdp_cwd, fsdp = _run(world, kind, True)
    for batch in range(BATCHES):
        assert fsdp[batch]['sample_ids'] == ddp[batch]['sample_ids'], batch
        for key in COMPARED[1:]:
            assert fsdp[batch][key] == pytest.approx(ddp[batch][key], abs=1e-5), (batch, key)
    final = fsdp_cwd / 'ckpt' / f'ep0-ba{BATCHES}'
    assert sorted(os.listdir(final)) == ['.metadata', '__0_0.distcp', '__1_0.distcp']
    policy, ema = _sharded_state(str(final))
    ddp_thetas = [_monolithic_state(ddp_cwd / 'ckpt' / f'ep0-ba{b}-rank0.pt') for b in range(1, BATCHES + 1)]
    want_policy, _ = ddp_thetas[-1]
    theta0 = _theta0(fsdp_cwd)
    moved = 0
    for name, w in want_policy.items():
        torch.testing.assert_close(policy[name], w, atol=1e-6, rtol=0, msg=name)
        moved += not torch.equal(w, theta0[name])
    assert moved > len(want_policy) // 2  # the run did train
    for name, phi in ema.items():
        want = theta0[name] * TAU**BATCHES
        for k, (theta_k, _) in enumerate(ddp_thetas, start=1):
            want = want + (1 - TAU) * TAU ** (BATCHES - k) * theta_k[name]
        torch.testing.assert_close(phi, want, atol=1e-6, rtol=0, msg=name)
        assert not torch.equal(phi, policy[name]) or torch.equal(policy[name], theta0[name]), name


def _export(capsys, checkpoint, out, weights='policy'):
    from tests.helpers.runs import run_cli

    rc, stdout, stderr = run_cli(capsys, 'export', checkpoint, out, '--weights', weights, '--no-progress')
    assert rc == 0, stdout + stderr
    return json.loads((out / 'rlp_export.json').read_text())


def test_export_of_sharded_checkpoint_gives_identical_logits(world, tmp_path, capsys):
    """``rlp export`` of the FSDP2 run's last sharded checkpoint, policy and EMA teacher: ``from_pretrained`` holds
    exactly the checkpoint's tensors and gives the same logits (torch.equal) as a model loaded with them."""
    from transformers import AutoModelForCausalLM

    from tests.helpers.runs import logits

    cwd, _ = _run(world, 'llama', True)
    folder = cwd / 'ckpt' / f'ep0-ba{BATCHES}'
    policy, ema = _sharded_state(str(folder))
    ids = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    for weights, want in (('policy', policy), ('ema', ema)):
        rec = _export(capsys, folder, tmp_path / weights, weights)
        assert rec['kind'] == 'sharded' and rec['batch'] == BATCHES and rec['weights'] == weights
        exported = AutoModelForCausalLM.from_pretrained(tmp_path / weights)
        got = exported.state_dict()
        for name, w in want.items():
            assert torch.equal(got[name], w), (weights, name)
        reference = AutoModelForCausalLM.from_config(exported.config)
        reference.load_state_dict(want, strict=False)
        reference.tie_weights()
        assert torch.equal(logits(exported, ids), logits(reference, ids)), weights


def _s3_keys(env, bucket, prefix):
    client = boto3.client('s3', endpoint_url=env['S3_ENDPOINT_URL'], region_name='us-east-1')
    return [o['Key'] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get('Contents', [])]


@pytest.mark.parametrize('where', ['local', 's3'])
def test_sharded_kill_and_restart_is_bitwise_identical(world, where, request, tmp_path, capsys):
    """FSDP2 run checkpointing every 2 batches (sharded), SIGKILLed (launcher and ranks) after batch 3 once ep0-ba2
    is complete, a torn ep0-ba4 left in the save folder, then the same command again: it resumes from ep0-ba2
    (skipping and then overwriting the torn folder) and every compared metric of every batch, the final policy and
    the final EMA teacher equal the uninterrupted run's bit for bit."""
    reference_cwd, reference = _run(world, 'llama', True)
    env = {}
    if where == 's3':
        env = s3_env(request.getfixturevalue('s3_server'))
        bucket = f'fsdp-{os.getpid()}'
        with environ(env):
            boto3.client('s3', endpoint_url=env['S3_ENDPOINT_URL'], region_name='us-east-1').create_bucket(
                Bucket=bucket
            )
        save = f's3://{bucket}/ckpt/{{run_name}}'
    else:
        save = str(world['root'] / 'killed-local' / 'ckpt')
    cwd, recipe = _recipe(world, f'killed-{where}', 'llama', True, save, save_interval='2ba')

    def complete(batch):
        if where == 's3':  # each rank uploads its own shard: complete once all three files are there
            keys = _s3_keys(env, bucket, f'ckpt/fsdp/ep0-ba{batch}/')
            return {k.rsplit('/', 1)[1] for k in keys} >= {'.metadata', '__0_0.distcp', '__1_0.distcp'}
        return (cwd / 'ckpt' / f'ep0-ba{batch}' / '.metadata').exists()

    proc = launch(
        recipe, nproc=2, cwd=cwd, env=hook_env({**env, 'PYTHONPATH': str(REPO)}, **{HANG_AFTER_BATCH: '3'}), popen=True
    )
    deadline = time.monotonic() + 240
    try:
        while not complete(2):
            assert proc.poll() is None, f'run ended before its ba2 checkpoint:\n{proc.stdout.read()[-3000:]}'
            assert time.monotonic() < deadline, 'no complete ba2 checkpoint within 240 s'
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # launcher, ranks and Composer's uploader processes at once
        proc.wait()
    assert not complete(4), 'killed too late'
    # a torn ep0-ba4 as a kill during its save leaves it: locally a shard without .metadata, on S3 the .metadata and
    # one rank's shard without the other's; the restart must skip it and write over it
    torn = reference_cwd / 'ckpt' / f'ep0-ba{BATCHES}'
    if where == 's3':
        client = boto3.client('s3', endpoint_url=env['S3_ENDPOINT_URL'], region_name='us-east-1')
        for name in ('.metadata', '__1_0.distcp'):
            client.upload_file(str(torn / name), bucket, f'ckpt/fsdp/ep0-ba{BATCHES}/{name}')
    else:
        (cwd / 'ckpt' / f'ep0-ba{BATCHES}').mkdir()
        (cwd / 'ckpt' / f'ep0-ba{BATCHES}' / '__1_0.distcp').write_bytes((torn / '__1_0.distcp').read_bytes())
    restarted = launch(recipe, nproc=2, cwd=cwd, env=env)
    logs = restarted.stdout + restarted.stderr + rank_logs(cwd)
    assert restarted.returncode == 0, logs[-6000:]
    assert 'resuming from' in logs and 'ep0-ba2' in logs
    resumed = _records(cwd)
    for batch in range(BATCHES):
        for key in COMPARED:
            assert resumed[batch][key] == reference[batch][key], (where, batch, key)
    final = f'{save.replace("{run_name}", "fsdp")}/ep0-ba{BATCHES}'
    for weights in ('policy', 'ema'):
        with environ(env):
            got = _export(capsys, final, tmp_path / f'{weights}-resumed', weights)
        want = _export(capsys, reference_cwd / 'ckpt' / f'ep0-ba{BATCHES}', tmp_path / f'{weights}-ref', weights)
        assert got['weights_sha256'] == want['weights_sha256'], weights


def test_torn_sharded_checkpoint_on_s3_is_skipped(world, s3, tmp_path):
    """A sharded folder on S3 whose .metadata landed but not every rank's shard (a job killed during the uploads) is
    not resumed from: the newest complete one is; once the missing shard is there, the folder counts."""
    import shutil

    from rlp.run.checkpoint import find_latest_checkpoint
    from tests.helpers.runs import upload

    cwd, _ = _run(world, 'llama', True)
    local = tmp_path / 'ckpt'
    for batch in (BATCHES - 1, BATCHES):
        shutil.copytree(cwd / 'ckpt' / f'ep0-ba{batch}', local / f'ep0-ba{batch}')
    (local / f'ep0-ba{BATCHES}' / '__1_0.distcp').unlink()
    folder = upload(s3, local, 'torn/fsdp')
    assert find_latest_checkpoint(folder, 'fsdp') == f'{folder}/ep0-ba{BATCHES - 1}'
    s3.client.upload_file(
        str(cwd / 'ckpt' / f'ep0-ba{BATCHES}' / '__1_0.distcp'), s3.bucket, f'torn/fsdp/ep0-ba{BATCHES}/__1_0.distcp'
    )
    assert find_latest_checkpoint(folder, 'fsdp') == f'{folder}/ep0-ba{BATCHES}'
