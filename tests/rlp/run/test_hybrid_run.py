"""A hybrid model (tiny random-init Nemotron-H: Mamba2 + attention + MLP) trained with RLP under ``composer -n 2``.

Checked against an uninterrupted 4-batch run on 2 ranks (which says in its log that the training forward runs
unpacked for the recurrent layers): a second run whose save folder holds only that run's batch-2 checkpoint resumes
from it, and its per-batch sample ids, losses and RLP scores for batches 2 and 3 and its batch-4 weights (policy and
EMA teacher) are bitwise equal to the uninterrupted run's.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from rlp.run.metrics import read_metrics
from rlp.tools.export import _rlp_state
from tests.helpers.training import (
    COMPARED,
    TINY_NEMOTRON_H,
    TINY_RLP,
    launch,
    packed_samples,
    rank_logs,
    tiny_recipe,
    write_mds,
    write_recipe,
)

pytestmark = pytest.mark.slow


def _run(root, name, duration):
    cwd = root / name
    cwd.mkdir(exist_ok=True)
    recipe = tiny_recipe(
        streams={'web': {'local': str(root / 'data'), 'split': 'train'}},
        run_name='hybrid',
        max_duration=duration,
        save_interval='2ba',
        save_folder=str(cwd / 'ckpt'),
        rlp=TINY_RLP,
        model_config=TINY_NEMOTRON_H,
    )
    proc = launch(write_recipe(cwd / 'recipe.yaml', recipe), nproc=2, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + rank_logs(cwd)
    return cwd, proc.stdout + proc.stderr + rank_logs(cwd)


def _weights(cwd):
    state = torch.load(cwd / 'ckpt' / 'ep0-ba4-rank0.pt', map_location='cpu', weights_only=False)['state']
    return state['model'], _rlp_state(state)


def test_two_ranks_resume_bitwise(tmp_path):
    """Resumed from the batch-2 checkpoint for batches 3 and 4 == the uninterrupted 4-batch run."""
    write_mds(str(tmp_path / 'data' / 'train'), packed_samples(32, 32, seed=3))
    whole, log = _run(tmp_path, 'whole', '4ba')
    assert 'recurrent layers [0, 2]' in log
    (tmp_path / 'part' / 'ckpt').mkdir(parents=True)
    shutil.copy(whole / 'ckpt' / 'ep0-ba2-rank0.pt', tmp_path / 'part' / 'ckpt')
    part, log = _run(tmp_path, 'part', '4ba')
    assert 'resuming from' in log and 'ep0-ba2-rank0.pt' in log
    want = read_metrics(str(whole / 'runs' / 'hybrid' / 'metrics.jsonl'))
    got = read_metrics(str(part / 'runs' / 'hybrid' / 'metrics.jsonl'))
    assert sorted(want) == list(range(4)) and sorted(got) == [2, 3]
    for batch in (2, 3):
        for key in COMPARED:
            assert got[batch][key] == want[batch][key], (batch, key)
    (w_model, w_rlp), (g_model, g_rlp) = _weights(whole), _weights(part)
    assert w_model.keys() == g_model.keys() and any('mixer.A_log' in k for k in w_model)
    assert all(torch.equal(w_model[k], g_model[k]) for k in w_model)
    w_ema, g_ema = w_rlp['teacher']['ema'], g_rlp['teacher']['ema']
    assert w_ema.keys() == g_ema.keys() and all(torch.equal(w_ema[k], g_ema[k]) for k in w_ema)
