"""User errors of ``python -m rlp.train``, run as real subprocesses (offline, on a tiny local MDS stream and the
bundled tokenizer): each ends with exactly one line on stderr naming the value, the rule and the fix, exit code 2,
no traceback, and the working folder exactly as it was (no run folder, no checkpoint folder, no cache)."""

from __future__ import annotations

import pytest

from tests.helpers.commands import error_line, run_command, tree
from tests.helpers.training import packed_samples, tiny_recipe, write_mds, write_recipe

STREAM_SCHEMES = 's3://, gs://, oci://, azure://, azure-dl://, dbfs://, hf://, sftp://, alipan://'
USAGE = (
    'usage: python -m rlp.train RECIPE [key.sub=value ...]  (or: composer -n N -m rlp.train RECIPE [key.sub=value '
    '...]); e.g. python -m rlp.train recipes/smoke-cpu.yaml'
)
RLP_REASON_TAGS = {
    'positions': {'unit': 'document', 'k': 1, 'min_context': 4},
    'rollouts': {'group_size': 2, 'max_thought_tokens': 4},
    'template': {'open_tag': '<reason>', 'close_tag': '</reason>'},
}


@pytest.fixture
def workdir(tmp_path):
    """A folder with a tiny local stream (``data/train``) and a valid NTP recipe ``recipe.yaml`` saving to
    ``ckpt/{run_name}``; returns (folder, the paths in it before the run)."""
    write_mds(str(tmp_path / 'data' / 'train'), packed_samples(8, 32, seed=3))
    recipe = tiny_recipe(
        streams={'web': {'local': 'data', 'split': 'train'}}, save_folder='ckpt/{run_name}', max_duration='2ba'
    )
    write_recipe(tmp_path / 'recipe.yaml', recipe)
    write_recipe(tmp_path / 'tags.yaml', {**recipe, 'rlp': RLP_REASON_TAGS})
    (tmp_path / 'broken.yaml').write_text('run_name: tiny\nmodel:\n  config: {model_type: llama\ndata: 1\n')
    return tmp_path, tree(tmp_path)


CASES = {
    'ftp stream remote': (
        ['recipe.yaml', 'data.streams.web.remote=ftp://host/x'],
        "rlp.train: invalid recipe recipe.yaml: data.streams.web.remote='ftp://host/x': the scheme ftp:// is not "
        f'supported; rule: data.streams.web.remote is a local folder or a URI streaming 0.13 can use '
        f'({STREAM_SCHEMES}); fix: copy the shards to a local folder or to one of those stores',
    ),
    'az stream remote': (
        ['recipe.yaml', 'data.streams.web.remote=az://container/x'],
        "rlp.train: invalid recipe recipe.yaml: data.streams.web.remote='az://container/x': the scheme az:// is not "
        f'supported; rule: data.streams.web.remote is a local folder or a URI streaming 0.13 can use '
        f'({STREAM_SCHEMES}); fix: write azure:// instead of az://',
    ),
    'ftp save folder': (
        ['recipe.yaml', 'trainer.save_folder=ftp://host/ckpt'],
        "rlp.train: invalid recipe recipe.yaml: trainer.save_folder='ftp://host/ckpt': the scheme ftp:// is not "
        'supported; rule: trainer.save_folder is a local folder or a URI Composer 0.32 can use (s3://, gs://, '
        'oci://, azure://, dbfs://); fix: save to a local folder or to one of those stores',
    ),
    'yaml error in the recipe file': (
        ['broken.yaml'],
        "rlp.train: invalid recipe broken.yaml: recipe 'broken.yaml' is not valid YAML at line 4, column 5: "
        "expected ',' or '}', but got ':' (while parsing a flow mapping started at line 3, column 11); rule: a "
        'recipe is a YAML mapping of sections; fix: correct that spot (nested keys indented by spaces, no tabs; '
        'every bracket and quote closed; quote values holding ": " or " #")',
    ),
    'yaml error in an override': (
        ['recipe.yaml', 'trainer.fsdp=[1,2'],
        "rlp.train: invalid recipe recipe.yaml: override 'trainer.fsdp=[1,2': the value '[1,2' is not valid YAML "
        "(at column 5 of the value: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence "
        'started at line 1, column 1)); fix: complete it (close every bracket and quote), or pass it as a string '
        'by quoting it in YAML, e.g. trainer.fsdp="\'[1,2\'" in the shell',
    ),
    'override without =': (
        ['recipe.yaml', 'trainer.max_duration'],
        "rlp.train: invalid recipe recipe.yaml: override 'trainer.max_duration' is not key.sub=value; rule: every "
        'argument after the recipe is one override KEY=VALUE (the value parsed as YAML); fix: write e.g. '
        'trainer.max_duration=20ba',
    ),
    'no arguments': ([], f'rlp.train: error: a recipe file is required (overrides are optional); {USAGE}'),
    'unknown option': (['recipe.yaml', '--fast'], f'rlp.train: error: unrecognized arguments: --fast; {USAGE}'),
    'think tags not in the vocabulary': (
        ['tags.yaml'],
        "rlp.train: tokenizer 'bundled': rlp.template.open_tag='<reason>' is not a single token of this tokenizer "
        '(it encodes to [30, 271, 272, 81, 80, 32]); RLP needs each tag as one token; set '
        'rlp.template.add_tags=true to add it as a special token (embeddings are resized), or pick tags the '
        'tokenizer has',
    ),
    'hub id offline': (
        ['recipe.yaml', 'tokenizer.name_or_path=no-such-org/no-such-tokenizer'],
        "rlp.train: tokenizer.name_or_path='no-such-org/no-such-tokenizer' is not a local folder and cannot be "
        'downloaded: this machine is offline (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set) and the Hugging Face '
        'cache does not hold it; fix: check the name (HF_TOKEN for a gated model), or fetch it where the hub is '
        'reachable (save_pretrained to a folder, or copy the HF cache) and point at it',
    ),
    'wrong type': (
        ['recipe.yaml', 'trainer.global_train_batch_size=abc'],
        "rlp.train: invalid recipe recipe.yaml: trainer.global_train_batch_size: got 'abc', expected an integer",
    ),
    'unknown key at depth': (
        ['recipe.yaml', 'rlp={rollouts: {group_sise: 4}}'],
        "rlp.train: invalid recipe recipe.yaml: unknown key 'rlp.rollouts.group_sise'; allowed keys at "
        'rlp.rollouts: group_size, max_thought_tokens, temperature, top_p',
    ),
    'zero batch': (
        ['recipe.yaml', 'trainer.global_train_batch_size=0'],
        'rlp.train: invalid recipe recipe.yaml: trainer.global_train_batch_size=0 and device_train_microbatch_size=2 '
        'must be >= 1',
    ),
    'negative seq_len': (
        ['recipe.yaml', 'data.seq_len=-3'],
        'rlp.train: invalid recipe recipe.yaml: data.seq_len=-3 must be >= 2 (a next-token target needs a prefix)',
    ),
    'batch not divisible': (
        ['recipe.yaml', 'trainer.global_train_batch_size=5'],
        'rlp.train: invalid recipe recipe.yaml: trainer.global_train_batch_size=5 is not divisible by world size 1 x '
        'device_train_microbatch_size 2 = 2; pick a global batch that is a multiple of 2 (the same global batch on '
        'every world size keeps the data order)',
    ),
    'both loss weights 0': (
        ['recipe.yaml', 'rlp={loss: {ntp_weight: 0, rlp_weight: 0}}'],
        'rlp.train: invalid recipe recipe.yaml: rlp.loss.ntp_weight and rlp_weight are both 0; nothing would be '
        'trained; the paper uses rlp_weight 1',
    ),
    'local stream folder missing': (
        ['recipe.yaml', 'data.streams.web.local=nope'],
        "rlp.train: data.streams.web: no index.json in local folder 'nope/train'; prepare it with `rlp-data prepare "
        '... --out nope` or set remote',
    ),
}


@pytest.mark.parametrize('case', list(CASES))
def test_user_error_is_one_line(workdir, case):
    """The real command with one bad recipe, override or argument: exit code 2, stderr is exactly the expected
    line, and no file or folder appeared in the working folder."""
    folder, before = workdir
    argv, expected = CASES[case]
    proc = run_command(['-m', 'rlp.train', *argv], cwd=folder)
    assert error_line(proc, 2) == expected
    assert tree(folder) == before


def test_missing_local_tokenizer_folder(workdir):
    """``tokenizer.name_or_path: ./nope`` says the folder does not exist (with its absolute path and the working
    folder), not transformers' 'Repo id must be in the form ...'; nothing is written."""
    folder, before = workdir
    proc = run_command(['-m', 'rlp.train', 'recipe.yaml', 'tokenizer.name_or_path=./nope'], cwd=folder)
    assert error_line(proc, 2) == (
        f"rlp.train: tokenizer.name_or_path='./nope': the folder {folder / 'nope'} does not exist; rule: a "
        f'tokenizer is an existing local folder or a hub id; fix: check the path (a relative path starts from the '
        f'working folder {folder})'
    )
    assert tree(folder) == before


NO_CREDENTIALS = {
    'AWS_ACCESS_KEY_ID': '',
    'AWS_SECRET_ACCESS_KEY': '',
    'AWS_SESSION_TOKEN': '',
    'AWS_SHARED_CREDENTIALS_FILE': '/nonexistent/credentials',
    'AWS_CONFIG_FILE': '/nonexistent/config',
}
STORE_CASES = {
    'stream in a missing bucket': (
        ['data.streams.web.remote=s3://no-such-bucket/data', 'data.streams.web.local=$delete'],
        {},
        'rlp.train: data.streams.web: cannot read its manifest.json: cannot list s3://no-such-bucket/data/train: '
        "bucket 'no-such-bucket' does not exist (or is not visible with these credentials); fix: create the bucket "
        'or correct the URI',
    ),
    'save folder in a missing bucket': (
        ['trainer.save_folder=s3://no-such-bucket/ckpt'],
        {},
        "rlp.train: trainer.save_folder='s3://no-such-bucket/ckpt': bucket 'no-such-bucket' is not usable (S3 error "
        '404); create it or fix the name/credentials (S3_ENDPOINT_URL, AWS_* variables)',
    ),
    'stream without credentials': (
        ['data.streams.web.remote=s3://no-such-bucket/data', 'data.streams.web.local=$delete'],
        NO_CREDENTIALS,
        'rlp.train: data.streams.web: cannot read its manifest.json: cannot list s3://no-such-bucket/data/train: no '
        'S3 credentials found; rule: S3 access needs credentials from the standard AWS chain; fix: set '
        'AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile)',
    ),
    'save folder without credentials': (
        ['trainer.save_folder=s3://no-such-bucket/ckpt'],
        NO_CREDENTIALS,
        "rlp.train: trainer.save_folder='s3://no-such-bucket/ckpt': cannot reach bucket 'no-such-bucket' (Unable to "
        'locate credentials); check S3_ENDPOINT_URL and the AWS credentials',
    ),
}


@pytest.mark.parametrize('case', list(STORE_CASES))
def test_object_store_error_is_one_line(workdir, s3_server, case):
    """Against the real local S3 server: a stream or save folder in a bucket that does not exist, and the same
    without any credentials, each end in the expected single line with exit code 2 and nothing written."""
    folder, before = workdir
    overrides, env, expected = STORE_CASES[case]
    store = {
        'S3_ENDPOINT_URL': s3_server,
        'AWS_ENDPOINT_URL': s3_server,
        'AWS_DEFAULT_REGION': 'us-east-1',
        'AWS_ACCESS_KEY_ID': 'testing',
        'AWS_SECRET_ACCESS_KEY': 'testing',
    }
    proc = run_command(['-m', 'rlp.train', 'recipe.yaml', *overrides], cwd=folder, env={**store, **env})
    assert error_line(proc, 2) == expected
    assert tree(folder) == before
