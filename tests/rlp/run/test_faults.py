"""SIGKILL at chosen phases of training, then the same command again: the resumed run reproduces the uninterrupted
one bitwise.

One uninterrupted 8-batch run under ``composer -n 1`` without checkpoints (module fixture, shared by every case) is
the reference. Each case starts the same recipe with checkpoints every 4 batches on the local S3 server and the
``RLP_TEST_HANG_IN`` hook of ``tests/helpers/hooks/sitecustomize.py``, which blocks the process inside the named
phase and prints a marker on stderr; the test waits for that marker in the run's output (so the kill is known to land
in the phase), checks what S3 holds, SIGKILLs the process group (launcher, rank, Composer's uploader processes) and
starts the same command in the same folder. Phases:

- ``rollout``: inside ``rlp.rollouts.sample_thoughts`` during batch 6 (ba4 on S3, ba8 not written);
- ``backward``: inside the backward pass of batch 6 (a parameter's gradient hook);
- ``upload``: mid-transfer of ``ep0-ba8-rank0.pt`` in Composer's uploader process (the first 256 KiB of the body
  read to be sent, the object not written; training has finished and waits for it): ba4 is the newest complete
  checkpoint;
- ``pointer``: on entry to the upload of ``latest-rank0.pt.symlink``, after ``ep0-ba4-rank0.pt`` is on S3, with
  training held after batch 5 (checkpoint uploaded, pointer not: the window in which Composer's own autoresume
  would start from scratch).

Each resume must log ``resuming from .../ep0-ba4-rank0.pt``, and per batch the sample ids, losses (total, ntp,
rlp) and RLP rewards/scores in ``metrics.jsonl`` must equal the reference's exactly.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import boto3
import pytest

from rlp.run.metrics import read_metrics
from tests.helpers.hooks import HANG_IN, hook_env
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

BATCHES = 8
CASES = {
    'rollout': 'rollout:6',
    'backward': 'backward:6',
    'upload': 'upload:ep0-ba8-rank0.pt',
    'pointer': 'upload:latest-rank0.pt.symlink@5',
}
WHERE = {  # the markers the hooks print (all of them must appear)
    'rollout': ['hanging in rlp.rollouts.sample_thoughts at batch 6'],
    'backward': ['hanging in the backward pass of batch 6'],
    'upload': ['hanging in the upload of ckpt-upload/resume/ep0-ba8-rank0.pt (262144 of '],
    'pointer': [
        'hanging in the upload of ckpt-pointer/resume/latest-rank0.pt.symlink (before its request',
        'upload:latest-rank0.pt.symlink@5: training holds',
    ],
}


@pytest.fixture(scope='module')
def world(s3_server, tmp_path_factory):
    """A bucket with the training data (48 packed samples), the subprocess env, and the reference run's records."""
    env = {**s3_env(s3_server), 'PYTHONPATH': str(REPO)}
    bucket = f'faults-{os.getpid()}'
    client = boto3.client(
        's3', endpoint_url=s3_server, region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='x'
    )
    client.create_bucket(Bucket=bucket)
    with environ(env):
        write_mds(f's3://{bucket}/data/train', packed_samples(48, 32, seed=5))
    w = {'env': env, 'bucket': bucket, 'client': client, 'root': tmp_path_factory.mktemp('faults')}
    cwd, recipe = _setup(w, 'reference', checkpoints=False)
    start = time.monotonic()
    proc = launch(recipe, nproc=1, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + rank_logs(cwd)
    w['reference'], w['reference_s'] = _records(cwd), time.monotonic() - start
    return w


def _setup(world, name, checkpoints=True):
    cwd = world['root'] / name
    cwd.mkdir()
    recipe = tiny_recipe(
        streams={'web': {'remote': f's3://{world["bucket"]}/data', 'split': 'train'}},
        run_name='resume',
        max_duration=f'{BATCHES}ba',
        save_interval='4ba',
        microbatch=1,
        save_folder=f's3://{world["bucket"]}/ckpt-{name}/{{run_name}}' if checkpoints else None,
        rlp=TINY_RLP,
    )
    return cwd, write_recipe(cwd / 'recipe.yaml', recipe)


def _records(cwd):
    records = read_metrics(str(cwd / 'runs' / 'resume' / 'metrics.jsonl'))
    assert sorted(records) == list(range(BATCHES)), f'batches recorded: {sorted(records)}\n{rank_logs(cwd)}'
    return records


def _keys(world, prefix):
    listed = world['client'].list_objects_v2(Bucket=world['bucket'], Prefix=prefix)
    return sorted(o['Key'].rsplit('/', 1)[-1] for o in listed.get('Contents', []))


def _kill_in_phase(world, case):
    """Start the hooked run, wait for its marker (and ba4 on S3), SIGKILL the group; return (cwd, recipe, S3 keys).

    Rank 0 of ``composer -n 1`` writes to the launcher's own stdout/stderr (one pipe here): a thread drains it.
    """
    cwd, recipe = _setup(world, case)
    proc = launch(recipe, nproc=1, cwd=cwd, env=hook_env(world['env'], **{HANG_IN: CASES[case]}), popen=True)
    output: list[bytes] = []
    threading.Thread(target=lambda: output.extend(iter(proc.stdout.readline, b'')), daemon=True).start()
    deadline = time.monotonic() + 240
    try:
        while True:
            marker = all(m.encode() in b''.join(output) for m in WHERE[case])
            if marker and 'ep0-ba4-rank0.pt' in _keys(world, f'ckpt-{case}/'):
                break
            text = b''.join(output).decode(errors='replace')[-5000:]
            assert proc.poll() is None, f'{case}: run ended before its kill point\n{text}'
            assert time.monotonic() < deadline, f'{case}: no markers {WHERE[case]} within 240 s\n{text}'
            time.sleep(0.05)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # launcher, rank and Composer's uploader processes at once
        except ProcessLookupError:  # the whole group had exited (the assertion above says why)
            pass
        proc.wait()
    return cwd, recipe, _keys(world, f'ckpt-{case}/')


@pytest.mark.parametrize('case', list(CASES))
def test_kill_in_phase_then_resume_is_bitwise_identical(world, case):
    """SIGKILL inside ``case``'s phase + the same command again == the uninterrupted run, batch by batch."""
    start = time.monotonic()
    cwd, recipe, at_kill = _kill_in_phase(world, case)
    killed_s = time.monotonic() - start
    assert 'ep0-ba4-rank0.pt' in at_kill and 'ep0-ba8-rank0.pt' not in at_kill, f'{case}: S3 at kill: {at_kill}'
    if case == 'pointer':
        assert not any(k.endswith('.symlink') for k in at_kill), f'pointer uploaded before the kill: {at_kill}'
    ran = read_metrics(str(cwd / 'runs' / 'resume' / 'metrics.jsonl'))  # batches finished before the kill
    restarted = launch(recipe, nproc=1, cwd=cwd, env=world['env'])
    logs = restarted.stdout + restarted.stderr + rank_logs(cwd)
    assert restarted.returncode == 0, logs[-6000:]
    assert 'resuming from s3://' in logs and 'ep0-ba4-rank0.pt' in logs.split('resuming from', 1)[1][:200], logs
    resumed = _records(cwd)
    for batch in range(BATCHES):
        for key in COMPARED:
            reference = world['reference'][batch]
            assert key in reference, f'{key} missing from batch {batch}: {sorted(reference)}'
            assert (
                resumed[batch][key] == reference[key]
            ), f'{case}, batch {batch}, {key}: {resumed[batch][key]!r} != {reference[key]!r} (S3 at kill: {at_kill})'
    print(
        f'\n{case}: killed after {killed_s:.0f} s with batches {sorted(ran)} recorded and {at_kill} on S3; resume '
        f'redid {max(ran, default=3) - 3} finished batch(es) from ba4 in {time.monotonic() - start - killed_s:.0f} s '
        f'(reference run {world["reference_s"]:.0f} s)'
    )
