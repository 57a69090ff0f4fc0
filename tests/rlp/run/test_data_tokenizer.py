"""Checks `rlp.run.integrity.check_stream_tokenizers` and `rlp.train` against datasets prepared by `rlp-data prepare`
with the bundled tokenizer (501 tokens) and a second real BPE trained here on the same corpus (400 tokens).

The recipe's tokenizer is compared with each stream's `manifest.json` (length and the hash `rlp-data prepare`
records): the same tokenizer under another name passes; another tokenizer is refused in one line naming the stream,
both tokenizers and the fix, for a local stream and one on the local S3 server; `allow_tokenizer_mismatch` turns the
refusal into a warning; a stream without a manifest is skipped with a log line. End to end (`python -m rlp.train`):
the mismatch stops before any model is built with exit 2; with the mismatch allowed the run stops at the first
token id beyond the model's 400 embeddings with exit 1 and one line; a flipped byte in a shard stops the run with
exit 1 and one line, no traceback.
"""

from __future__ import annotations

import logging
import shutil

import pytest

from pipeline.bundled_tokenizer import bundled_tokenizer_dir
from pipeline.cli import main as rlp_data
from rlp.run.integrity import check_stream_tokenizers
from rlp.run.recipe_schema import ConfigError, DataConfig, StreamConfig, TokenizerConfig
from rlp.run.train import main as train_main
from tests.helpers.damage import flip_byte, shard_files
from tests.helpers.pipeline_data import BASE
from tests.helpers.training import launch, packed_samples, tiny_recipe, write_mds, write_recipe


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """(a dataset prepared with the bundled tokenizer, a 400-token tokenizer folder)."""
    from pipeline.bundled_tokenizer import build_tokenizer
    from pipeline.synthetic import write_jsonl

    root = tmp_path_factory.mktemp('tok')
    build_tokenizer(root / 'tok400', vocab_size=400)
    corpus = write_jsonl(root / 'c.jsonl', 60)
    argv = ['prepare', '--input', str(corpus), *BASE, '--seq-len', '32', '--shard-mb', '0.01', '--out']
    assert rlp_data([*argv, str(root / 'data')]) == 0
    return root / 'data', root / 'tok400'


def data_cfg(**streams) -> DataConfig:
    return DataConfig(seq_len=32, streams={k: StreamConfig(**v) for k, v in streams.items()})


def test_same_tokenizer_under_another_name_passes(world):
    """`bundled` and the bundled folder's path both match the manifest written with the folder's path."""
    data, _ = world
    for name in ('bundled', str(bundled_tokenizer_dir())):
        check_stream_tokenizers(data_cfg(web={'local': str(data)}), TokenizerConfig(name_or_path=name))


def test_other_tokenizer_is_refused_in_one_line(world):
    """The 400-token tokenizer against data prepared with 501 tokens: the stream, both tokenizers and the fix."""
    data, tok400 = world
    with pytest.raises(ConfigError) as err:
        check_stream_tokenizers(data_cfg(web={'local': str(data)}), TokenizerConfig(name_or_path=str(tok400)))
    text = str(err.value)
    assert '\n' not in text and text.startswith('data.streams.web was prepared with tokenizer')
    assert '(501 tokens' in text and '(400 tokens' in text and str(tok400) in text
    assert 'fix: set tokenizer.name_or_path' in text and 'allow_tokenizer_mismatch=true' in text


def test_allow_flag_and_missing_manifest_log(world, tmp_path, caplog):
    """allow_tokenizer_mismatch: a warning instead of the error; a stream written without manifest.json (as
    llm-foundry writes them) is skipped with an info line naming it."""
    data, tok400 = world
    write_mds(str(tmp_path / 'foundry'), packed_samples(8, 32), dtype='int32', doc_starts=False)
    cfg = data_cfg(web={'local': str(data), 'allow_tokenizer_mismatch': True}, old={'local': str(tmp_path / 'foundry')})
    with caplog.at_level(logging.INFO, logger='rlp.data'):
        check_stream_tokenizers(cfg, TokenizerConfig(name_or_path=str(tok400)))
    assert 'training anyway: data.streams.web.allow_tokenizer_mismatch is true' in caplog.text
    assert 'data.streams.old: no manifest.json' in caplog.text


def test_remote_stream_manifest_is_read_from_s3(world, s3):
    """The manifest of a stream on the local S3 server (in a split sub-folder) is read from the server."""
    data, tok400 = world
    for path in sorted(data.rglob('*')):
        if path.is_file():
            s3.client.upload_file(str(path), s3.bucket, f'ds/train/{path.relative_to(data)}')
    cfg = data_cfg(web={'remote': f's3://{s3.bucket}/ds', 'split': 'train'})
    check_stream_tokenizers(cfg, TokenizerConfig())
    with pytest.raises(ConfigError, match=f'prepare s3://{s3.bucket}/ds/train again'):
        check_stream_tokenizers(cfg, TokenizerConfig(name_or_path=str(tok400)))


def test_train_refuses_the_mismatch_before_building_the_model(world, tmp_path, capsys, monkeypatch):
    """rlp.train with the 400-token tokenizer on the 501-token data: exit 2, one line, no metrics."""
    data, tok400 = world
    monkeypatch.chdir(tmp_path)
    recipe = tiny_recipe(streams={'web': {'local': str(data)}})
    recipe['tokenizer'] = {'name_or_path': str(tok400)}
    assert train_main([str(write_recipe(tmp_path / 'r.yaml', recipe))]) == 2
    err = capsys.readouterr().err
    assert 'data.streams.web was prepared with tokenizer' in err and 'Traceback' not in err
    assert not (tmp_path / 'runs' / 'tiny' / 'metrics.jsonl').exists()


@pytest.mark.slow
def test_train_stops_on_foreign_ids_and_on_a_damaged_shard(world, tmp_path):
    """Two real runs: the mismatch allowed, the 400-embedding model meets an id >= 400 and the run stops with exit 1
    and one line; on a copy of the data with one flipped byte in each .zstd shard (the right tokenizer) the run
    stops with exit 1 naming the stream and the shard, and leaves no run folder (it trained nothing). Neither prints a
    traceback."""
    data, tok400 = world
    recipe = tiny_recipe(streams={'web': {'local': str(data), 'allow_tokenizer_mismatch': True}}, max_duration='4ba')
    recipe['tokenizer'] = {'name_or_path': str(tok400)}
    proc = launch(write_recipe(tmp_path / 'r.yaml', recipe), nproc=None, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'rlp.train: stopped: data.streams.web: sample' in proc.stderr and '400 embeddings' in proc.stderr
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]

    shutil.copytree(data, tmp_path / 'bad')
    for zst, raw in shard_files(tmp_path / 'bad'):
        flip_byte(zst)
        raw.unlink(missing_ok=True)  # a sound decompressed copy left by the first run would be read instead
    recipe = tiny_recipe(streams={'web': {'local': str(tmp_path / 'bad')}}, max_duration='4ba', run_name='bad')
    proc = launch(write_recipe(tmp_path / 'bad.yaml', recipe), nproc=None, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = [x for x in proc.stderr.splitlines() if x.startswith('rlp.train: stopped:')]
    assert line and 'data.streams.web:' in line[0] and '.mds.zstd' in line[0] and 'prepare the data again' in line[0]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / 'runs' / 'bad').exists()  # trained nothing: no empty run folder left behind


def test_seq_len_must_match_the_manifest(world, tmp_path, capsys, monkeypatch):
    """The data is prepared at seq_len 32: a recipe at 64 (every sample padded) and at 16 (half of each sample cut)
    are refused in one line naming the stream, both lengths and the fix, for a second stream too (every manifest is
    read); through rlp.train: exit 2, nothing trained."""
    data, _ = world
    for seq_len, effect in ((64, 'padded to 64'), (16, 'cut to 16')):
        cfg = DataConfig(seq_len=seq_len, streams={'web': StreamConfig(local=str(data))})
        with pytest.raises(ConfigError) as err:
            check_stream_tokenizers(cfg, TokenizerConfig())
        text = str(err.value)
        assert '\n' not in text and text.startswith('data.streams.web was prepared with seq_len 32'), text
        assert f'data.seq_len={seq_len}' in text and effect in text and 'fix: set data.seq_len=32' in text
    shutil.copytree(data, tmp_path / 'data16')
    manifest = tmp_path / 'data16' / 'manifest.json'
    manifest.write_text(manifest.read_text().replace('"seq_len": 32', '"seq_len": 16'))
    two = DataConfig(
        seq_len=32, streams={'web': StreamConfig(local=str(data)), 'b': StreamConfig(local=str(manifest.parent))}
    )
    with pytest.raises(ConfigError, match='data.streams.b was prepared with seq_len 16'):
        check_stream_tokenizers(two, TokenizerConfig())
    monkeypatch.chdir(tmp_path)
    recipe = tiny_recipe(streams={'web': {'local': str(data)}}, seq_len=64)
    assert train_main([str(write_recipe(tmp_path / 'r.yaml', recipe))]) == 2
    err = capsys.readouterr().err
    assert 'data.streams.web was prepared with seq_len 32' in err and 'Traceback' not in err
    assert not (tmp_path / 'runs' / 'tiny' / 'metrics.jsonl').exists()
