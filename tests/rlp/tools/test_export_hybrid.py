"""rlp export and rlp eval on a hybrid model: a tiny random-init Nemotron-H (Mamba2 + attention + MLP) trained for
one RLP batch in a real composer.Trainer on CPU.

Checked: Composer's config round trip fails on the infinite float transformers tags in Nemotron-H's
``time_step_limit`` (the upstream bug) and succeeds once the tags are decoded (``decode_tagged_floats``), giving the
same config; the exported policy and EMA teacher load with ``from_pretrained`` (native class, no remote code) with
logits identical to the trained module's and the teacher's; ``rlp eval`` on the checkpoint gives the same figures as
on the exported folder.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlp.run.checkpoint_load import decode_tagged_floats
from tests.helpers.pipeline_data import prepared_synthetic
from tests.helpers.rlp_batches import VOCAB, packed_batch
from tests.helpers.runs import logits, run_cli, train_run
from tests.helpers.tiny_models import build_tiny_model


@pytest.fixture(scope='module')
def trained(tokenizer, tmp_path_factory):
    model = build_tiny_model('nemotron_h', VOCAB, seed=0)
    return train_run(tokenizer, tmp_path_factory.mktemp('run') / 'checkpoints', batches=1, model=model)


def test_composer_config_round_trip_needs_the_float_tags_decoded(trained):
    """The saved config holds time_step_limit as [0.0, {'__float__': 'Infinity'}]: Composer's rebuild refuses it;
    decoded, it rebuilds a config equal to the model's."""
    from composer.models.huggingface import get_hf_config_from_composer_state_dict

    ck = torch.load(trained.checkpoint(1), map_location='cpu', weights_only=False)
    integrations = ck['state']['integrations']
    content = integrations['huggingface']['model']['config']['content']
    assert content['time_step_limit'] == [0.0, {'__float__': 'Infinity'}]
    with pytest.raises(Exception, match='time_step_limit'):
        get_hf_config_from_composer_state_dict({'state': {'integrations': copy.deepcopy(integrations)}})
    fixed = copy.deepcopy(integrations)
    fixed['huggingface']['model']['config']['content'] = decode_tagged_floats(content)
    config = get_hf_config_from_composer_state_dict({'state': {'integrations': fixed}})
    assert tuple(config.time_step_limit) == (0.0, math.inf)
    assert config.to_dict() == trained.hf.config.to_dict()


def test_export_policy_and_teacher_load_natively_with_identical_logits(trained, tokenizer, tmp_path, capsys):
    """rlp export of the policy and of the EMA teacher: from_pretrained builds NemotronHForCausalLM with logits
    identical to the trained module and to the teacher module."""
    ids = packed_batch(tokenizer, rows=2, length=24, seed=5)['input_ids']
    for which, module in (('policy', trained.hf), ('ema', trained.algo.teachers.ema.module)):
        out = tmp_path / which
        rc, stdout, err = run_cli(capsys, 'export', trained.checkpoint(1), out, '--weights', which, '--no-progress')
        assert rc == 0, err
        got = AutoModelForCausalLM.from_pretrained(out)
        assert type(got).__name__ == 'NemotronHForCausalLM' and 'NemotronHForCausalLM' in stdout
        assert torch.equal(logits(got, ids), logits(module, ids)), which
    assert not torch.equal(logits(trained.hf, ids), logits(trained.algo.teachers.ema.module, ids))


def test_eval_on_the_checkpoint_equals_eval_on_the_export(trained, tmp_path, capsys):
    """rlp eval --model <checkpoint> and --model <exported folder>: the same finite figures."""
    data = prepared_synthetic(tmp_path, docs=8, seq_len=48)
    rc, _, err = run_cli(capsys, 'export', trained.checkpoint(1), tmp_path / 'hf', '--no-progress')
    assert rc == 0, err
    figures = []
    for model in (trained.checkpoint(1), tmp_path / 'hf'):
        out = tmp_path / f'{len(figures)}.json'
        flags = ['--positions', '4', '--group-size', '2', '--max-thought-tokens', '3', '--samples', '4']
        rc, _, err = run_cli(capsys, 'eval', '--model', model, '--data', data, *flags, '--json', out)
        assert rc == 0, err
        figures.append(json.loads(out.read_text())['metrics'])
    assert figures[0] == figures[1] and figures[0]['positions'] == 4
    assert all(math.isfinite(v) for v in figures[0].values() if isinstance(v, float))
