"""Exact resumption and elasticity, end to end through the launcher, data and checkpoints on the local S3 server.

For `composer -n 1` and `composer -n 2` (gloo): an uninterrupted 12-batch run (no checkpoints at all, so saving has
no side effect either) is compared with a run that checkpoints every 4 batches, is SIGKILLed (launcher, ranks and
Composer's uploader together) after batch 6 - between the ba4 and ba8 checkpoints, once ba4 is on S3 - and is
started again with the same command in the same folder. Per batch, the sample ids, the losses (total, ntp, rlp) and
the RLP rewards/scores in `metrics.jsonl` must be bitwise equal. Elasticity: the uninterrupted runs on 1 and 2 ranks
see the same global batches (same sample ids per batch). The recipe is a tiny Llama with RLP mixed with NTP (G 2,
3-token thoughts) and a batch split into microbatches of 1, so the algorithm's keyed randomness and accumulation are
covered too.
"""

from __future__ import annotations

import itertools
import os
import signal
import time

import boto3
import pytest

from rlp.run.metrics import read_metrics
from tests.helpers.hooks import HANG_AFTER_BATCH, hook_env
from tests.helpers.s3_outage import s3_env
from tests.helpers.training import (
    COMPARED,
    REPO,
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

_names = itertools.count()


@pytest.fixture(scope='module')
def world(s3_server, tmp_path_factory):
    """A bucket holding the training data (64 packed samples) and the env that points subprocesses at it."""
    env = s3_env(s3_server)
    with environ(env):
        bucket = f'resume-{os.getpid()}'
        boto3.client('s3', endpoint_url=s3_server, region_name='us-east-1').create_bucket(Bucket=bucket)
        write_mds(f's3://{bucket}/data/train', packed_samples(64, 32, seed=5))
    return {'env': env, 'bucket': bucket, 'root': tmp_path_factory.mktemp('resume'), 'uninterrupted': {}}


def _setup(world, name, checkpoints=True):
    cwd = world['root'] / name
    cwd.mkdir()
    save = f's3://{world["bucket"]}/ckpt-{name}/{{run_name}}' if checkpoints else None
    recipe = tiny_recipe(
        streams={'web': {'remote': f's3://{world["bucket"]}/data', 'split': 'train'}},
        run_name='resume',
        max_duration='12ba',
        save_interval='4ba',
        microbatch=1,
        save_folder=save,
        rlp=TINY_RLP,
    )
    return cwd, write_recipe(cwd / 'recipe.yaml', recipe)


def _records(cwd):
    records = read_metrics(str(cwd / 'runs' / 'resume' / 'metrics.jsonl'))
    assert sorted(records) == list(range(12)), f'batches recorded: {sorted(records)}\n{rank_logs(cwd)}'
    return records


def _uninterrupted(world, nproc):
    if nproc not in world['uninterrupted']:
        cwd, recipe = _setup(world, f'u{nproc}-{next(_names)}', checkpoints=False)
        proc = launch(recipe, nproc=nproc, cwd=cwd, env=world['env'])
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + rank_logs(cwd)
        world['uninterrupted'][nproc] = _records(cwd)
    return world['uninterrupted'][nproc]


def _s3_keys(world, prefix):
    client = boto3.client('s3', endpoint_url=world['env']['S3_ENDPOINT_URL'], region_name='us-east-1')
    return [o['Key'] for o in client.list_objects_v2(Bucket=world['bucket'], Prefix=prefix).get('Contents', [])]


def _killed_and_restarted(world, nproc):
    name = f'k{nproc}-{next(_names)}'
    cwd, recipe = _setup(world, name)
    proc = launch(
        recipe,
        nproc=nproc,
        cwd=cwd,
        env=hook_env({**world['env'], 'PYTHONPATH': str(REPO)}, **{HANG_AFTER_BATCH: '6'}),
        popen=True,
    )
    ckpt = f'ckpt-{name}/resume/'
    deadline = time.monotonic() + 240
    try:
        while not any(k.endswith('ep0-ba4-rank0.pt') for k in _s3_keys(world, ckpt)):
            assert proc.poll() is None, f'run ended before its ba4 checkpoint:\n{proc.stdout.read()[-3000:]}'
            assert time.monotonic() < deadline, 'no ba4 checkpoint on S3 within 240 s'
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # launcher, ranks and Composer's uploader processes at once
        proc.wait()
    keys = _s3_keys(world, ckpt)
    assert not any(k.endswith('ep0-ba8-rank0.pt') for k in keys), f'killed too late: {keys}'
    restarted = launch(recipe, nproc=nproc, cwd=cwd, env=world['env'])
    assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-3000:] + rank_logs(cwd)
    assert 'resuming from' in restarted.stdout + restarted.stderr + rank_logs(cwd)
    return _records(cwd), keys


@pytest.mark.parametrize('nproc', [1, 2])
def test_kill_and_restart_is_bitwise_identical(world, nproc):
    """SIGKILL between checkpoints + the same command again == the uninterrupted run, batch by batch."""
    reference = _uninterrupted(world, nproc)
    resumed, keys_at_kill = _killed_and_restarted(world, nproc)
    for batch in range(12):
        for key in COMPARED:
            assert key in reference[batch], f'{key} missing from batch {batch}: {sorted(reference[batch])}'
            assert resumed[batch][key] == reference[batch][key], (
                f'-n {nproc}, batch {batch}, {key}: {resumed[batch][key]!r} != {reference[batch][key]!r} '
                f'(S3 at kill: {keys_at_kill})'
            )


def test_same_global_batches_on_one_and_two_ranks(world):
    """Elasticity: with the same global batch, -n 1 and -n 2 draw the same samples in every batch."""
    one, two = _uninterrupted(world, 1), _uninterrupted(world, 2)
    for batch in range(12):
        assert sorted(one[batch]['sample_ids']) == sorted(two[batch]['sample_ids']), batch
    assert len({i for r in one.values() for i in r['sample_ids']}) == 48  # 12 x 4 distinct samples of 64
