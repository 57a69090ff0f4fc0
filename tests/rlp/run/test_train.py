"""Checks the `rlp.train` entry end to end on tiny local data: the next-token-only path (`rlp: null`) with
`python -m rlp.train` writes one metrics record per batch (with the FLOPs counted: next-token forward + backward by
hand, the RLP parts adding up, the cumulative count going on after a resume), checkpoints, the resolved config and
a summary; the RLP path under `composer -n 1` (and, with RPT's reward, `-n 2`) logs the reward metrics and writes
the thoughts JSONL; a rerun of a
finished run resumes from its newest checkpoint, and a rerun of a finished run does nothing; invalid recipes,
overrides and a missing save-folder bucket stop before any training with exit code 2 and a one-line message."""

from __future__ import annotations

import pytest

from rlp.flops import FlopModel, ntp_flops
from rlp.run.metrics import read_metrics
from rlp.run.summary import summarize
from rlp.run.train import main
from tests.helpers.training import TINY_LLAMA, launch, packed_samples, rank_logs, tiny_recipe, write_mds, write_recipe

TINY_RLP = {
    'positions': {'unit': 'document', 'k': 1, 'min_context': 4},
    'rollouts': {'group_size': 2, 'max_thought_tokens': 4},
    'loss': {'ntp_weight': 1.0, 'rlp_weight': 1.0},
    'log': {'every_n_batches': 2},
}


def _flop_model() -> FlopModel:
    """The tiny recipe's Llama (vocabulary of the bundled tokenizer), for the FLOP counts."""
    from rlp.run.models import build_hf_model, build_tokenizer
    from rlp.run.recipe_schema import ModelConfig, TokenizerConfig

    tokenizer = build_tokenizer(TokenizerConfig(name_or_path='bundled'))
    return FlopModel.of(build_hf_model(ModelConfig(config=dict(TINY_LLAMA)), tokenizer))


@pytest.fixture
def local_run(tmp_path):
    write_mds(str(tmp_path / 'data' / 'train'), packed_samples(48, 32, seed=3))

    def make(**kw):
        recipe = tiny_recipe(
            streams={'web': {'local': str(tmp_path / 'data'), 'split': 'train'}},
            save_folder=str(tmp_path / 'ckpt' / '{run_name}'),
            **kw,
        )
        return write_recipe(tmp_path / 'recipe.yaml', recipe)

    return tmp_path, make


def test_ntp_only_with_python_m(local_run):
    """rlp: null, 6 batches: exit 0, records 0..5 with loss/train/total and sample ids of 4, checkpoints ba2..ba6,
    resolved config and summary; a launch with max_duration 8ba resumes from ba6 and extends the run to 8 batches;
    the same launch again finds nothing to do and leaves metrics.jsonl unchanged."""
    tmp_path, make = local_run
    recipe = make(max_duration='6ba')
    proc = launch(recipe, nproc=None, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert '== rlp.train summary: 6 batches' in proc.stdout
    records = read_metrics(str(tmp_path / 'runs' / 'tiny' / 'metrics.jsonl'))
    assert sorted(records) == list(range(6))
    assert all(len(r['sample_ids']) == 4 and r['loss/train/total'] > 0 for r in records.values())
    assert not any(k.startswith('rlp/') for r in records.values() for k in r)
    per_batch = ntp_flops(_flop_model(), [32] * 4)  # 4 full rows of 32 tokens, next-token fwd + bwd
    assert [r['throughput/flops'] for r in records.values()] == pytest.approx([per_batch] * 6, rel=1e-9)
    assert [r['throughput/flops_total'] for r in records.values()] == pytest.approx(
        [per_batch * (i + 1) for i in range(6)], rel=1e-9
    )
    assert sorted(p.name for p in (tmp_path / 'ckpt' / 'tiny').glob('ep*.pt')) == [
        'ep0-ba2-rank0.pt',
        'ep0-ba4-rank0.pt',
        'ep0-ba6-rank0.pt',
    ]
    assert 'rlp: null' in (tmp_path / 'runs' / 'tiny' / 'resolved_config.yaml').read_text()

    again = launch(recipe, nproc=None, cwd=tmp_path, overrides=('trainer.max_duration=8ba',))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert 'resuming from' in again.stderr + again.stdout
    resumed = read_metrics(str(tmp_path / 'runs' / 'tiny' / 'metrics.jsonl'))
    assert sorted(resumed) == list(range(8)) and all(resumed[i] == records[i] for i in range(6))
    assert resumed[7]['throughput/flops_total'] == pytest.approx(8 * per_batch, rel=1e-9)  # the count resumes

    finished = launch(recipe, nproc=None, cwd=tmp_path, overrides=('trainer.max_duration=8ba',))
    assert finished.returncode == 0 and 'nothing to do' in finished.stdout, finished.stderr[-3000:]
    assert read_metrics(str(tmp_path / 'runs' / 'tiny' / 'metrics.jsonl')) == resumed


@pytest.mark.parametrize(
    'nproc, reward',
    [(1, {}), pytest.param(2, {'kind': 'rpt'}, marks=pytest.mark.slow)],
    ids=['n1-info_gain', 'n2-rpt'],
)
def test_rlp_with_composer(local_run, nproc, reward):
    """RLP mixed with NTP under the launcher: rlp/ metrics per batch, the thoughts JSONL, the summary's trends; the
    same with RPT's reward on two gloo ranks (`composer -n 2`), whose logged reward is a hit rate in [0, 1]."""
    tmp_path, make = local_run
    proc = launch(make(max_duration='4ba', rlp={**TINY_RLP, 'reward': reward}), nproc=nproc, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + rank_logs(tmp_path)
    records = read_metrics(str(tmp_path / 'runs' / 'tiny' / 'metrics.jsonl'))
    assert sorted(records) == [0, 1, 2, 3]
    for r in records.values():
        assert {'loss/train/ntp', 'loss/train/rlp', 'rlp/reward_mean', 'rlp/gain_vs_ema'} <= set(r)
        parts = sum(r[f'rlp/flops_{k}'] for k in ('rollout_prefill', 'rollout_decode', 'teacher', 'policy'))
        assert r['throughput/flops_rlp'] == pytest.approx(parts, rel=1e-9) and parts > 0
        assert r['throughput/flops_ntp'] == pytest.approx(ntp_flops(_flop_model(), [32] * 4), rel=1e-9)
        assert r['throughput/flops'] == pytest.approx(parts + r['throughput/flops_ntp'], rel=1e-9)
    if reward.get('kind') == 'rpt':
        assert all(0.0 <= r['rlp/reward_mean'] <= 1.0 for r in records.values())
    totals = [records[i]['throughput/flops_total'] for i in range(4)]
    assert totals == pytest.approx([sum(records[j]['throughput/flops'] for j in range(i + 1)) for i in range(4)])
    assert (tmp_path / 'runs' / 'tiny' / 'thoughts.jsonl').stat().st_size > 0
    text = summarize(str(tmp_path / 'runs' / 'tiny'))
    assert 'rlp/reward_mean' in text and 'thoughts.jsonl' in text and 'loss/train/ntp' in text


@pytest.mark.parametrize(
    'overrides,message',
    [
        (['trainer.optimizer.lrr=1'], "unknown key 'trainer.optimizer.lrr'"),
        (['data.streams={}'], 'data.streams is empty'),
        (['trainer.global_train_batch_size=6', 'trainer.device_train_microbatch_size=4'], 'not divisible'),
        (['trainer.device=cpu', 'trainer.precision=amp_bf16'], 'needs a GPU'),
    ],
)
def test_bad_recipes_stop_before_training(local_run, capsys, monkeypatch, overrides, message):
    """Validation errors: exit code 2, the message on stderr, no metrics written."""
    tmp_path, make = local_run
    monkeypatch.chdir(tmp_path)
    assert main([str(make()), *overrides]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'runs' / 'tiny' / 'metrics.jsonl').exists()


def test_missing_bucket_stops_before_training(local_run, s3, capsys, monkeypatch):
    """An s3:// save folder in a bucket that does not exist: exit code 2 naming the bucket, nothing trained."""
    tmp_path, make = local_run
    monkeypatch.chdir(tmp_path)
    assert main([str(make()), 'trainer.save_folder=s3://no-such-bucket-rlp/ckpt']) == 2
    assert "bucket 'no-such-bucket-rlp' is not usable" in capsys.readouterr().err
    assert not (tmp_path / 'runs' / 'tiny' / 'metrics.jsonl').exists()


def test_console_is_one_line_per_batch_unless_verbose(local_run):
    """Default console (``loggers.console: true``): stdout holds exactly one ``[batch i/3] loss T`` line per batch
    with metrics.jsonl's value for that batch, one line saying where the resolved config was written (the config
    itself is not printed), and the summary names the checkpoint folder. ``loggers.console_verbose: true`` (a new
    run) prints the resolved config and Composer's ConsoleLogger dump of every scalar instead."""
    tmp_path, make = local_run
    proc = launch(make(max_duration='3ba'), nproc=None, cwd=tmp_path, overrides=('loggers.console=true',))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = read_metrics(str(tmp_path / 'runs' / 'tiny' / 'metrics.jsonl'))
    batch_lines = [line for line in proc.stdout.splitlines() if line.startswith('[batch')]
    assert batch_lines == [f'[batch {i + 1}/3] loss {records[i]["loss/train/total"]:.4f}' for i in range(3)]
    config = tmp_path / 'runs' / 'tiny' / 'resolved_config.yaml'
    assert f'resolved recipe {tmp_path / "recipe.yaml"} (world size 1) written to {config}' in proc.stdout
    assert 'run_name: tiny' not in proc.stdout and 'Train loss/train/total' not in proc.stdout
    assert f'  checkpoints: {tmp_path / "ckpt" / "tiny"}\n' in proc.stdout

    verbose = launch(
        make(max_duration='1ba'),
        nproc=None,
        cwd=tmp_path,
        overrides=('loggers.console=true', 'loggers.console_verbose=true', 'run_name=verbose'),
    )
    assert verbose.returncode == 0, verbose.stdout[-3000:] + verbose.stderr[-3000:]
    assert 'run_name: verbose' in verbose.stdout and 'Train loss/train/total: ' in verbose.stdout
    assert not any(line.startswith('[batch ') for line in verbose.stdout.splitlines())
