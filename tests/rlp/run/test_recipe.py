"""Checks recipe validation (`rlp.run.recipe`) against the rules a user relies on: an unknown key at any depth is an
error naming the key path and the allowed keys; a missing stream, mixed weighting families, a global batch not
divisible by world size x microbatch and a missing save-folder bucket are refused with one-line errors; variables
and `key.sub=value` overrides resolve as documented; `rlp: null` means next-token training only; cross-field and
cross-section rules (amp precision on the CPU, sample ids without metrics.jsonl) are refused by the typed recipe
itself; a recipe's `base:` chain deep-merges (mappings merge, null/scalars/lists replace, `$delete` removes a key,
`$replace: true` replaces a mapping) before overrides and variables, and cycles, missing bases and unknown keys in
the merged result are refused; the URI schemes accepted for streams and checkpoints are exactly those streaming and
Composer implement, and a YAML syntax error in a base recipe names that file."""

from __future__ import annotations

import copy
import textwrap

import pytest

from rlp.config import RLPConfig
from rlp.run.recipe import (
    apply_overrides,
    load_recipe,
    merge_recipe_data,
    parse_recipe,
    read_recipe_data,
    resolve_variables,
)
from rlp.run.recipe_schema import ConfigError, recipe_to_dict, validate_for_world

BASE = {
    'run_name': 'unit',
    'model': {'config': {'model_type': 'llama', 'hidden_size': 32}},
    'data': {'seq_len': 16, 'streams': {'web': {'remote': 's3://bkt/web', 'proportion': 1.0}}},
    'trainer': {'max_duration': '10ba', 'global_train_batch_size': 8, 'device_train_microbatch_size': 2},
}


def recipe(**changes):
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split('__')
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return data


def test_minimal_recipe_defaults():
    """A minimal recipe validates; defaults: NTP only, autoresume on, fp32, seed 17."""
    r = parse_recipe(recipe())
    assert r.rlp is None and r.trainer.autoresume and r.trainer.precision == 'fp32' and r.seed == 17
    assert recipe_to_dict(r)['data']['streams']['web']['remote'] == 's3://bkt/web'


@pytest.mark.parametrize(
    'where,key',
    [
        ('trainer__optimizer', 'lrr'),
        ('data__streams__web', 'remotee'),
        ('rlp__rollouts', 'grup_size'),
        ('', 'trainr'),
    ],
)
def test_unknown_key_at_any_depth(where, key):
    """The error names the full key path and lists the allowed keys at that level."""
    data = recipe()
    node = data
    for part in filter(None, where.split('__')):
        node = node.setdefault(part, {})
    node[key] = 1
    path = '.'.join(filter(None, where.split('__') + [key]))
    with pytest.raises(ConfigError, match=rf"unknown key '{path}'.*allowed keys"):
        parse_recipe(data)


def test_missing_streams():
    """No stream, or a stream with neither remote nor local, is refused with a fix."""
    with pytest.raises(ConfigError, match='data.streams is empty'):
        parse_recipe(recipe(data__streams={}))
    with pytest.raises(ConfigError, match='data.streams.web has neither remote nor local'):
        parse_recipe(recipe(data__streams={'web': {'split': 'train'}}))


def test_missing_local_stream_folder(tmp_path):
    """A local-only stream whose folder holds no index.json fails when the loader is built, naming the folder."""
    from rlp.run.data import build_streams

    r = parse_recipe(recipe(data__streams={'web': {'local': str(tmp_path / 'nope')}}))
    with pytest.raises(ConfigError, match='no index.json'):
        build_streams(r.data, r.run_name)


def test_mixed_weighting_families():
    """proportion on one stream and repeat/choose (or nothing) on another is refused."""
    streams = {'a': {'remote': 's3://b/a', 'proportion': 0.5}, 'b': {'remote': 's3://b/b', 'repeat': 2.0}}
    with pytest.raises(ConfigError, match='mix weighting families'):
        parse_recipe(recipe(data__streams=streams))
    streams = {'a': {'remote': 's3://b/a', 'proportion': 0.5}, 'b': {'remote': 's3://b/b'}}
    with pytest.raises(ConfigError, match='mix weighting families'):
        parse_recipe(recipe(data__streams=streams))
    with pytest.raises(ConfigError, match='one weighting family'):
        parse_recipe(recipe(data__streams={'a': {'remote': 's3://b/a', 'proportion': 0.5, 'choose': 3}}))
    ok = {'a': {'remote': 's3://b/a', 'repeat': 2.0}, 'b': {'remote': 's3://b/b', 'choose': 10}}
    assert parse_recipe(recipe(data__streams=ok)).data.streams['b'].choose == 10


def test_global_batch_divisibility():
    """global batch 8 with microbatch 2 works on 1, 2, 4 ranks and is refused on 3 (and on 8: 8 x 2 > 8)."""
    r = parse_recipe(recipe())
    assert [validate_for_world(r, n) for n in (1, 2, 4)] == [8, 4, 2]
    for n in (3, 8):
        with pytest.raises(ConfigError, match=r'global_train_batch_size=8 is not divisible by world size'):
            validate_for_world(r, n)


def test_missing_save_folder_bucket(s3):
    """An s3:// save folder whose bucket does not exist fails before training, naming the bucket."""
    from rlp.run.checkpoint import check_save_folder

    check_save_folder(f's3://{s3.bucket}/ckpt/{{run_name}}', 'unit')  # exists: fine
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket-xyz' is not usable"):
        check_save_folder('s3://no-such-bucket-xyz/ckpt/{run_name}', 'unit')


def test_other_field_rules():
    """Bad durations, run names, model sections and non-positive weights give one-line errors."""
    cases = [
        (recipe(trainer__max_duration='10 steps'), 'not a Composer time'),
        (recipe(run_name='a b/c'), 'run_name'),
        (recipe(model={}), 'exactly one of name_or_path'),
        (recipe(model={'config': {'hidden_size': 3}}), 'model_type'),
        (recipe(data__streams={'a': {'remote': 's3://b/a', 'proportion': 0}}), 'must be > 0'),
        (recipe(data__streams={'a': {'remote': 's3://b/a', 'token_dtype': 'float32'}}), 'token_dtype'),
        (recipe(trainer__precision='fp64'), 'allowed values'),
        (recipe(trainer__scheduler={'t_warmup': '5 batches'}), 't_warmup'),
    ]
    for data, match in cases:
        with pytest.raises(ConfigError, match=match):
            parse_recipe(data)


def test_rlp_section_is_typed():
    """rlp: mapping -> RLPConfig (its own rules apply); rlp: null -> None (NTP only)."""
    r = parse_recipe(recipe(rlp={'rollouts': {'group_size': 4}}))
    assert isinstance(r.rlp, RLPConfig) and r.rlp.rollouts.group_size == 4
    with pytest.raises(ConfigError, match='group_size must be >= 2'):
        parse_recipe(recipe(rlp={'rollouts': {'group_size': 1}}))
    assert parse_recipe(recipe(rlp=None)).rlp is None


def test_variables_and_overrides(tmp_path):
    """${variables.x} keeps the type when it is the whole value and is substituted inside strings; overrides are
    YAML-parsed, create missing mappings, and apply before variables are resolved."""
    data = recipe(variables={'seq': 64, 'bucket': 's3://bkt', 'root': '${variables.bucket}/data'})
    data['data']['seq_len'] = '${variables.seq}'
    data['data']['streams']['web']['remote'] = '${variables.root}/web'
    resolved = resolve_variables(apply_overrides(data, ['variables.seq=128', 'trainer.optimizer.lr=1e-5', 'rlp=null']))
    r = parse_recipe(resolved)
    assert r.data.seq_len == 128 and r.data.streams['web'].remote == 's3://bkt/data/web'
    assert r.trainer.optimizer.lr == 1e-5 and r.rlp is None
    with pytest.raises(ConfigError, match='not defined'):
        resolve_variables({'variables': {}, 'run_name': '${variables.nope}'})
    with pytest.raises(ConfigError, match='key.sub=value'):
        apply_overrides({}, ['trainer.max_duration'])
    with pytest.raises(ConfigError, match='does not exist'):
        load_recipe(tmp_path / 'missing.yaml')


def test_cross_field_rules_live_in_the_typed_recipe():
    """Rules that the recipe alone decides are refused by parse_recipe, not later by rlp.train."""
    with pytest.raises(ConfigError, match=r'trainer.precision=amp_bf16 needs a GPU but trainer.device=cpu'):
        parse_recipe(recipe(trainer__device='cpu', trainer__precision='amp_bf16'))
    assert parse_recipe(recipe(trainer__device='auto', trainer__precision='amp_bf16')).trainer.precision == 'amp_bf16'
    with pytest.raises(ConfigError, match=r'trainer.record_sample_ids needs loggers.metrics_jsonl=true'):
        parse_recipe(recipe(trainer__record_sample_ids=True, loggers={'metrics_jsonl': False}))
    assert parse_recipe(recipe(trainer__record_sample_ids=True)).trainer.record_sample_ids


def write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


BASE_YAML = """
    variables: {bucket: s3://bkt}
    run_name: base
    model: {config: {model_type: llama, hidden_size: 32}}
    data:
      seq_len: 16
      num_workers: 2
      streams:
        web: {remote: '${variables.bucket}/web', proportion: 0.5}
        code: {remote: '${variables.bucket}/code', proportion: 0.5}
    rlp:
      rollouts: {group_size: 4}
    trainer:
      max_duration: 10ba
      global_train_batch_size: 8
      optimizer: {lr: 1.0e-4, betas: [0.8, 0.9]}
      fsdp: {mixed_precision: FULL, activation_checkpointing: true}
"""


def test_base_deep_merge(tmp_path):
    """The child's mappings merge into the base's key by key; its scalars, lists and nulls replace; variables of
    the merged result resolve after overrides; `base` is gone from the result."""
    write(tmp_path, 'base.yaml', BASE_YAML)
    child = write(
        tmp_path,
        'child.yaml',
        """
        base: base.yaml
        variables: {bucket: s3://other}
        run_name: child
        data:
          streams:
            web: {proportion: 0.75}
        rlp: null
        trainer:
          optimizer: {betas: [0.7, 0.8]}
        """,
    )
    merged = read_recipe_data(child)
    assert 'base' not in merged
    r = load_recipe(child, ['trainer.max_duration=4ba'])
    assert r.run_name == 'child' and r.rlp is None and r.trainer.max_duration == '4ba'
    assert r.data.num_workers == 2 and r.trainer.global_train_batch_size == 8  # kept from the base
    assert r.data.streams['web'].remote == 's3://other/web' and r.data.streams['web'].proportion == 0.75
    assert list(r.data.streams) == ['web', 'code'] and r.data.streams['code'].remote == 's3://other/code'
    assert r.trainer.optimizer.betas == [0.7, 0.8] and r.trainer.optimizer.lr == 1e-4  # the list replaced
    assert r.trainer.fsdp == {'mixed_precision': 'FULL', 'activation_checkpointing': True}
    assert 'base' not in recipe_to_dict(r)


def test_base_delete_and_replace(tmp_path):
    """`KEY: $delete` removes a base key (the schema default applies); `$replace: true` replaces a mapping."""
    write(tmp_path, 'base.yaml', BASE_YAML)
    child = write(
        tmp_path,
        'child.yaml',
        """
        base: base.yaml
        data:
          num_workers: $delete
          streams:
            $replace: true
            docs: {remote: s3://bkt/docs}
        trainer:
          fsdp: {activation_checkpointing: $delete}
        """,
    )
    r = load_recipe(child)
    assert list(r.data.streams) == ['docs'] and r.data.num_workers == 0
    assert r.trainer.fsdp == {'mixed_precision': 'FULL'}
    without = write(tmp_path, 'merged-names.yaml', 'base: base.yaml\ndata: {streams: {docs: {remote: s3://b/d}}}\n')
    with pytest.raises(ConfigError, match='mix weighting families'):  # merged, not replaced: web, code and docs
        load_recipe(without)
    typo = write(tmp_path, 'typo.yaml', 'base: base.yaml\ndata: {num_workrs: $delete}\n')
    with pytest.raises(ConfigError, match=r'data.num_workrs: \$delete removes a key of the base recipe'):
        load_recipe(typo)
    bad = write(tmp_path, 'bad.yaml', 'base: base.yaml\ndata: {streams: {$replace: yes-please}}\n')
    with pytest.raises(ConfigError, match=r'\$replace takes only true'):
        load_recipe(bad)
    assert merge_recipe_data({'a': {'x': 1}}, {'a': {'$replace': True, 'y': 2}}) == {'a': {'y': 2}}
    r = load_recipe(write(tmp_path, 'plain.yaml', BASE_YAML), ['trainer.fsdp=$delete'])
    assert r.trainer.fsdp is None
    with pytest.raises(ConfigError, match='has no'):
        load_recipe(tmp_path / 'plain.yaml', ['trainer.nothing=$delete'])


def test_base_chain_and_relative_paths(tmp_path):
    """A chain of bases merges root first; each base is relative to the folder of the file that names it."""
    write(tmp_path, 'shared/root.yaml', BASE_YAML)
    write(tmp_path, 'shared/middle.yaml', 'base: root.yaml\nrun_name: middle\nseed: 3\n')
    leaf = write(tmp_path, 'runs/leaf.yaml', 'base: ../shared/middle.yaml\nseed: 5\n')
    r = load_recipe(leaf)
    assert (r.run_name, r.seed, r.rlp.rollouts.group_size) == ('middle', 5, 4)


def test_base_errors(tmp_path):
    """Cycles, missing bases and unknown keys in the merged result are one-line errors naming the file/key."""
    write(tmp_path, 'a.yaml', 'base: b.yaml\nrun_name: a\n')
    write(tmp_path, 'b.yaml', 'base: a.yaml\nrun_name: b\n')
    with pytest.raises(ConfigError, match='is a cycle') as err:
        load_recipe(tmp_path / 'a.yaml')
    assert '\n' not in str(err.value) and 'a.yaml -> ' in str(err.value)
    write(tmp_path, 'self.yaml', 'base: self.yaml\n')
    with pytest.raises(ConfigError, match='is a cycle'):
        load_recipe(tmp_path / 'self.yaml')
    write(tmp_path, 'orphan.yaml', 'base: gone.yaml\nrun_name: x\n')
    with pytest.raises(ConfigError, match=r"base 'gone.yaml' does not exist") as err:
        load_recipe(tmp_path / 'orphan.yaml')
    assert '\n' not in str(err.value)
    write(tmp_path, 'base.yaml', BASE_YAML)
    write(tmp_path, 'typo.yaml', 'base: base.yaml\ntrainer: {optimizer: {lrr: 1.0}}\n')
    with pytest.raises(ConfigError, match=r"unknown key 'trainer.optimizer.lrr'.*allowed keys"):
        load_recipe(tmp_path / 'typo.yaml')
    write(tmp_path, 'listbase.yaml', 'base: [base.yaml]\n')
    with pytest.raises(ConfigError, match='is not a file name'):
        load_recipe(tmp_path / 'listbase.yaml')


def test_location_schemes_are_what_streaming_and_composer_implement():
    """A stream remote may use exactly streaming 0.13's downloaders (its ``DOWNLOADER_MAPPINGS``; ``dbfs-uc`` is the
    ``dbfs:/Volumes`` form of dbfs, ``''`` a local path) and a save folder exactly Composer 0.32's URI object stores
    (``BACKEND_TO_OBJECT_STORE_FACTORY`` plus its dbfs special case); each of them validates, another scheme
    does not."""
    from composer.utils.file_helpers import BACKEND_TO_OBJECT_STORE_FACTORY
    from streaming.base.storage.download import DOWNLOADER_MAPPINGS

    from rlp.run.recipe_checks import SAVE_FOLDER_SCHEMES, STREAM_SCHEMES

    assert set(STREAM_SCHEMES) == set(DOWNLOADER_MAPPINGS) - {'', 'dbfs-uc'}
    assert set(SAVE_FOLDER_SCHEMES) == set(BACKEND_TO_OBJECT_STORE_FACTORY) | {'dbfs'}
    data = recipe()
    for scheme in STREAM_SCHEMES:
        parse_recipe(apply_overrides(data, [f'data.streams.web.remote={scheme}://bucket/web']))
    parse_recipe(apply_overrides(data, ['data.streams.web.remote=dbfs:/Volumes/cat/schema/vol/web']))
    for scheme in SAVE_FOLDER_SCHEMES:
        parse_recipe(apply_overrides(data, [f'trainer.save_folder={scheme}://bucket/ckpt']))
    with pytest.raises(ConfigError, match='the scheme http:// is not supported'):
        parse_recipe(apply_overrides(data, ['data.streams.web.remote=http://host/web']))
    with pytest.raises(ConfigError, match='write gs:// instead of gcs://'):
        parse_recipe(apply_overrides(data, ['trainer.save_folder=gcs://bucket/ckpt']))


def test_yaml_error_in_a_base_recipe_names_that_file(tmp_path):
    """A syntax error inside the base recipe is reported with the base's path and its line and column."""
    (tmp_path / 'base.yaml').write_text('run_name: x\ntrainer:\n\tseed: 1\n')
    (tmp_path / 'child.yaml').write_text('base: base.yaml\nseed: 3\n')
    with pytest.raises(ConfigError) as err:
        load_recipe(tmp_path / 'child.yaml')
    assert str(err.value).startswith(f"recipe '{tmp_path / 'base.yaml'}' is not valid YAML at line 3, column 1: ")
    assert "found character '\\t' that cannot start any token" in str(err.value)


@pytest.mark.parametrize('where', ['data__streams__web__remote', 'trainer__save_folder'])
def test_signed_url_query_is_refused_by_the_recipe(tmp_path, where):
    """A query string (a signed URL) on a stream remote or the save folder is refused by load_recipe itself, as by
    rlp.train (tests/rlp/run/test_secrets.py), with the query redacted in the one-line message."""
    import yaml

    uri = 's3://bkt/web?X-Amz-Signature=s3cr3t&X-Amz-Expires=60'
    path = tmp_path / 'signed.yaml'
    path.write_text(yaml.safe_dump(recipe(**{where: uri})))
    with pytest.raises(ConfigError, match=r'carries a query string') as err:
        load_recipe(path)
    assert 's3cr3t' not in str(err.value) and '<redacted>' in str(err.value)
    with pytest.raises(ConfigError, match=r'carries a query string'):
        parse_recipe(recipe(**{where: uri}))
    load_recipe(path, [f'{where.replace("__", ".")}=s3://bkt/web'])  # the same recipe without the query loads


@pytest.mark.parametrize(
    'override, message',
    [
        (
            'trainer.fsdp={sharding_strategy: FULL_SHARD}',
            "trainer.fsdp.sharding_strategy='FULL_SHARD' is an FSDP1 option; rule: trainer.fsdp configures FSDP2 "
            '(fully_shard), where FSDP2 always shards parameters, gradients and optimizer state (FULL_SHARD); fix: '
            'remove trainer.fsdp.sharding_strategy',
        ),
        (
            'trainer.fsdp={state_dict_type: full}',
            "trainer.fsdp.state_dict_type='full' is not allowed; rule: sharded; fix: sharded checkpoints carry the "
            "teachers' shards; rlp export turns one into a full model",
        ),
        (
            'trainer.fsdp={mixed_precision: HALF}',
            "trainer.fsdp.mixed_precision='HALF' is not allowed; rule: FULL or DEFAULT or PURE; fix: set "
            'trainer.fsdp.mixed_precision to FULL or DEFAULT or PURE',
        ),
        ('trainer.fsdp={shard_everything: true}', 'trainer.fsdp.shard_everything is not an FSDP2 option'),
    ],
)
def test_fsdp_options_are_fsdp2(tmp_path, override, message):
    """trainer.fsdp takes FSDP2 options only: an FSDP1 key is named with what FSDP2 does instead, a full state
    dict and unknown values or keys are refused, each in one line; the FSDP2 options load as given."""
    path = write(tmp_path, 'plain.yaml', BASE_YAML)
    with pytest.raises(ConfigError) as err:
        load_recipe(path, [override])
    assert message in str(err.value) and '\n' not in str(err.value)
    ok = load_recipe(path, ['trainer.fsdp={mixed_precision: FULL, state_dict_type: sharded, reshard_after_forward: 2}'])
    assert ok.trainer.fsdp == {'mixed_precision': 'FULL', 'state_dict_type': 'sharded', 'reshard_after_forward': 2}
