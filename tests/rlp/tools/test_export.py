"""``rlp export`` against real Composer checkpoints of a tiny Llama trained with RLP by a real composer.Trainer.

Round trips (``AutoModelForCausalLM.from_pretrained(OUT_DIR)`` against the trained module in memory, logits
compared with ``torch.equal`` on held-out packed batches, both with eager attention): a monolithic checkpoint
file; a save folder (the newest of its checkpoints is taken); the same on the local S3 server (file and save
folder); Composer's sharded layout (torch.distributed.checkpoint, ``.metadata``) locally and on S3. ``--weights
ema`` gives exactly the algorithm's EMA teacher. The folder holds safetensors, the tokenizer (think tags as single
tokens, same encoding as the training tokenizer) and a generation config with the tokenizer's EOS/pad. OUT_DIR
rules (same model rewritten, different model refused, ``--overwrite``) and every bad input: one line on stderr
naming the value, exit code 2, no OUT_DIR and no temporary sibling left behind.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlp.config import TemplateConfig
from rlp.tools.export import MARKER, export_checkpoint
from tests.helpers.rlp_batches import CLOSE_ID, VOCAB, close_biased, packed_batch, rlp_config
from tests.helpers.runs import logits, run_cli, train_run, upload, write_sharded
from tests.helpers.tiny_models import build_tiny_model


@pytest.fixture(scope='module')
def trained(tokenizer, tmp_path_factory):
    """2 batches of RLP + SGD; monolithic checkpoints after batch 1 and batch 2 in one save folder."""
    return train_run(tokenizer, tmp_path_factory.mktemp('run') / 'checkpoints', batches=2)


@pytest.fixture(scope='module')
def held_out(tokenizer):
    return packed_batch(tokenizer, rows=3, length=24, seed=5)['input_ids']


def _load(folder):
    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation='eager')


def _assert_same_model(folder, module, ids):
    got = _load(folder)
    assert torch.equal(logits(got, ids), logits(module, ids))
    want = module.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in got.state_dict().items())


def _leftovers(parent):
    return sorted(p for p in os.listdir(parent) if p.startswith('.'))


def test_monolithic_file_round_trip(trained, held_out, tokenizer, tmp_path, capsys):
    """The batch-2 checkpoint file: identical logits and weights to the trained module; the folder holds
    model.safetensors, config.json, generation_config.json (EOS/pad of the tokenizer), the tokenizer (same ids as
    the training tokenizer, <think>/</think> single tokens) and rlp_export.json; the default (SDPA) load agrees too."""
    out = tmp_path / 'hf'
    rc, stdout, err = run_cli(capsys, 'export', trained.checkpoint(2), out, '--no-progress')
    assert rc == 0, err
    assert 'batch 2' in stdout and 'LlamaForCausalLM' in stdout
    _assert_same_model(out, trained.hf, held_out)
    files = set(os.listdir(out))
    assert {'model.safetensors', 'config.json', 'generation_config.json', 'tokenizer.json', MARKER} <= files
    assert not any(f.endswith('.bin') for f in files)
    gen = json.loads((out / 'generation_config.json').read_text())
    assert gen['eos_token_id'] == tokenizer.eos_token_id and gen['pad_token_id'] == tokenizer.pad_token_id
    tok = AutoTokenizer.from_pretrained(out)
    text = 'x = 4 <think> carry the 1 </think> 5'
    assert tok(text)['input_ids'] == tokenizer(text)['input_ids']
    assert tok.convert_tokens_to_ids(['<think>', '</think>']) == [1, CLOSE_ID]
    marker = json.loads((out / MARKER).read_text())
    assert marker['batch'] == 2 and marker['weights'] == 'policy' and marker['kind'] == 'monolithic'
    sdpa = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(logits(sdpa, held_out), logits(trained.hf, held_out), atol=1e-5, rtol=1e-5)
    assert _leftovers(tmp_path) == []


def test_save_folder_exports_newest_checkpoint(trained, held_out, tmp_path):
    """A save folder with the batch-1 and batch-2 checkpoints (and Composer's latest symlink) exports batch 2."""
    assert {p.name for p in trained.save_folder.iterdir()} >= {'latest-rank0.pt'}
    record = export_checkpoint(str(trained.save_folder), str(tmp_path / 'hf'), progress=False)
    assert record['batch'] == 2 and record['checkpoint'].endswith('-ba2-rank0.pt')
    _assert_same_model(tmp_path / 'hf', trained.hf, held_out)


def test_s3_file_and_save_folder(trained, held_out, tmp_path, s3):
    """The save folder uploaded to the local S3 server: its URI (newest checkpoint) and the batch-2 object's URI
    both export the trained model; the batch-1 object exports something else (the weights moved)."""
    uri = upload(s3, trained.save_folder, 'runs/a/checkpoints')
    rec = export_checkpoint(uri, str(tmp_path / 'from_folder'), progress=False)
    assert rec['batch'] == 2 and rec['checkpoint'].startswith('s3://')
    _assert_same_model(tmp_path / 'from_folder', trained.hf, held_out)
    export_checkpoint(f'{uri}/{trained.checkpoint(2).name}', str(tmp_path / 'from_file'), progress=False)
    _assert_same_model(tmp_path / 'from_file', trained.hf, held_out)
    export_checkpoint(f'{uri}/{trained.checkpoint(1).name}', str(tmp_path / 'ba1'), progress=False)
    assert not torch.equal(logits(_load(tmp_path / 'ba1'), held_out), logits(trained.hf, held_out))


def test_sharded_checkpoint_local_and_s3(trained, held_out, tmp_path, s3):
    """Composer's sharded layout (tests.helpers.runs.write_sharded): the checkpoint folder, its save folder and the
    same uploaded to S3 export the trained model; --weights ema from it equals the EMA teacher."""
    folder = write_sharded(trained.checkpoint(2), tmp_path / 'sharded')
    rec = export_checkpoint(str(folder), str(tmp_path / 'a'), progress=False)
    assert rec['kind'] == 'sharded' and rec['batch'] == 2
    _assert_same_model(tmp_path / 'a', trained.hf, held_out)
    rec = export_checkpoint(str(tmp_path / 'sharded'), str(tmp_path / 'b'), progress=False)
    assert rec['kind'] == 'sharded'
    _assert_same_model(tmp_path / 'b', trained.hf, held_out)
    uri = upload(s3, tmp_path / 'sharded', 'sharded')
    for source in (uri, f'{uri}/{folder.name}'):
        export_checkpoint(source, str(tmp_path / 'c'), progress=False, overwrite=True)
        _assert_same_model(tmp_path / 'c', trained.hf, held_out)
    export_checkpoint(uri, str(tmp_path / 'ema'), weights='ema', progress=False)
    _assert_same_model(tmp_path / 'ema', trained.algo.teachers.ema.module, held_out)


def test_sharded_state_drops_empty_dicts(trained, tokenizer, tmp_path):
    """The upstream loss that restore_dropped_special_tokens repairs: read back raw, a sharded checkpoint misses the
    tokenizer post-processor's empty ``special_tokens`` map and transformers cannot load that tokenizer; repaired,
    the tokenizer state equals the monolithic checkpoint's exactly, also for a template inside a Sequence."""
    import copy

    import torch.distributed.checkpoint as dcp
    from composer.models import HuggingFaceModel
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    from rlp.run.checkpoint_load import restore_dropped_special_tokens

    want = torch.load(trained.checkpoint(2), map_location='cpu', weights_only=False)['state']
    want_tok = want['integrations']['huggingface']['tokenizer']
    assert want_tok['tokenizer.json']['content']['post_processor']['special_tokens'] == {}
    folder = write_sharded(trained.checkpoint(2), tmp_path / 'sharded')
    raw = _load_state_dict_from_keys({'state'}, storage_reader=dcp.FileSystemReader(str(folder)))
    got_tok = raw['state']['integrations']['huggingface']['tokenizer']
    assert 'special_tokens' not in got_tok['tokenizer.json']['content']['post_processor']
    with pytest.raises(Exception, match='PostProcessorWrapper'):
        HuggingFaceModel.load_huggingface_tokenizer_from_saved_state(
            copy.deepcopy(raw['state']['integrations']['huggingface']), tokenizer_save_dir=str(tmp_path / 'raw')
        )
    restore_dropped_special_tokens(raw)
    assert got_tok == want_tok
    tok = HuggingFaceModel.load_huggingface_tokenizer_from_saved_state(
        raw['state']['integrations']['huggingface'], tokenizer_save_dir=str(tmp_path / 'fixed')
    )
    assert tok('<think>x</think>')['input_ids'] == tokenizer('<think>x</think>')['input_ids']
    template = {'type': 'TemplateProcessing', 'single': [], 'pair': []}
    nested = {'type': 'Sequence', 'processors': [{'type': 'ByteLevel'}, dict(template)]}
    ck = {'state': {'integrations': {'huggingface': {'tokenizer': {'tokenizer.json': {'content': {}}}}}}}
    ck['state']['integrations']['huggingface']['tokenizer']['tokenizer.json']['content']['post_processor'] = nested
    restore_dropped_special_tokens(ck)
    assert nested['processors'] == [{'type': 'ByteLevel'}, {**template, 'special_tokens': {}}]


def test_weights_ema_is_the_teacher(trained, held_out, tmp_path, capsys):
    """--weights ema writes the RLP algorithm's EMA teacher (weights and logits equal), which differs from the
    policy after two SGD steps at tau 0.5."""
    teacher = trained.algo.teachers.ema.module
    rc, _, err = run_cli(capsys, 'export', trained.save_folder, tmp_path / 'ema', '--weights', 'ema', '--no-progress')
    assert rc == 0, err
    _assert_same_model(tmp_path / 'ema', teacher, held_out)
    assert not torch.equal(logits(teacher, held_out), logits(trained.hf, held_out))
    assert json.loads((tmp_path / 'ema' / MARKER).read_text())['weights'] == 'ema'


def test_out_dir_rules(trained, tmp_path, capsys):
    """Re-exporting the same model into OUT_DIR works; a different model (the EMA) is refused and the folder is
    left byte for byte; --overwrite replaces it; a non-empty folder not written by rlp export is refused; a file is
    refused. No temporary sibling is left in any case."""
    out = tmp_path / 'hf'
    assert run_cli(capsys, 'export', trained.save_folder, out, '--no-progress')[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert run_cli(capsys, 'export', trained.checkpoint(2), out, '--no-progress')[0] == 0
    rc, _, err = run_cli(capsys, 'export', trained.save_folder, out, '--weights', 'ema', '--no-progress')
    assert rc == 2 and 'different model' in err and '--overwrite' in err and str(out) in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    rc, _, err = run_cli(capsys, 'export', trained.save_folder, out, '--weights', 'ema', '--overwrite', '--no-progress')
    assert rc == 0, err
    assert json.loads((out / MARKER).read_text())['weights'] == 'ema'
    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'notes.txt').write_text('mine')
    rc, _, err = run_cli(capsys, 'export', trained.save_folder, foreign, '--no-progress')
    assert rc == 2 and 'not written by rlp export' in err and (foreign / 'notes.txt').read_text() == 'mine'
    (tmp_path / 'file').write_text('x')
    rc, _, err = run_cli(capsys, 'export', trained.save_folder, tmp_path / 'file', '--no-progress')
    assert rc == 2 and 'is a file' in err
    rc, _, err = run_cli(capsys, 'export', trained.save_folder, 's3://bucket/hf', '--no-progress')
    assert rc == 2 and "OUT_DIR 's3://bucket/hf' must be a local folder" in err
    assert _leftovers(tmp_path) == []


def test_checkpoint_without_tokenizer_needs_one(tokenizer, held_out, tmp_path, capsys):
    """A checkpoint whose HuggingFaceModel had no tokenizer (and no RLP): refused without --tokenizer, exported
    with --tokenizer bundled (identical logits, the bundled tokenizer written); --weights ema is refused (no RLP)."""
    run = train_run(tokenizer, tmp_path / 'ck', batches=1, rlp=False, save_tokenizer=False)
    rc, _, err = run_cli(capsys, 'export', run.save_folder, tmp_path / 'hf', '--no-progress')
    assert rc == 2 and 'carries no tokenizer' in err and '--tokenizer' in err
    assert not (tmp_path / 'hf').exists()
    rc, _, err = run_cli(capsys, 'export', run.save_folder, tmp_path / 'hf', '--weights', 'ema', '--no-progress')
    assert rc == 2 and 'no RLP algorithm state' in err and '--weights policy' in err
    rc, _, err = run_cli(capsys, 'export', run.save_folder, tmp_path / 'hf', '--tokenizer', 'bundled', '--no-progress')
    assert rc == 0, err
    _assert_same_model(tmp_path / 'hf', run.hf, held_out)
    assert AutoTokenizer.from_pretrained(tmp_path / 'hf').get_vocab() == tokenizer.get_vocab()
    assert _leftovers(tmp_path) == []


def _tagless(tmp_path):
    """A word-level tokenizer of 100 tokens without <think>/</think>, saved as a folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {'<unk>': 0, **{f'w{i}': i for i in range(1, 100)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / 'tagless'
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token='<unk>', eos_token='<unk>').save_pretrained(folder)
    return folder


def test_bad_inputs(tokenizer, tmp_path, capsys, s3):
    """Each bad CHECKPOINT gives exit code 2 and one line naming it and the rule: a missing path (local and S3), a
    folder without a complete checkpoint (a truncated file, an incomplete sharded folder), a file that is not a
    torch archive, a torch archive that is not a Composer checkpoint of an HF model, a trained head that the model
    class cannot hold (a bias on lm_head), and a --tokenizer that cannot be loaded or lacks the think tags of an RLP
    checkpoint. OUT_DIR is never created."""
    empty = tmp_path / 'empty'
    (empty / 'ep0-ba8').mkdir(parents=True)  # sharded folder whose .metadata was never written
    (empty / 'ep0-ba4-rank0.pt').write_bytes(b'PK\x03\x04 cut')
    (tmp_path / 'notatorch.pt').write_text('hello')
    torch.save({'state': {'model': {'w': torch.zeros(1)}}, 'rng': []}, tmp_path / 'plain.pt')
    biased = train_run(
        tokenizer, tmp_path / 'biased', batches=1, model=close_biased(build_tiny_model('llama', VOCAB), CLOSE_ID, 2.0)
    )
    s3.client.put_object(Bucket=s3.bucket, Key='runs/x/readme.txt', Body=b'x')
    cases = [
        (tmp_path / 'missing', 'does not exist'),
        (f's3://{s3.bucket}/nothing/here', 'does not exist'),
        (empty, 'without a complete checkpoint'),
        (f's3://{s3.bucket}/runs/x', 'without a complete checkpoint'),
        (tmp_path / 'notatorch.pt', 'not a torch zip archive'),
        (tmp_path / 'plain.pt', 'not a Composer checkpoint of a Hugging Face model'),
        (biased.save_folder, "unexpected ['lm_head.bias']"),
    ]
    for source, message in cases:
        rc, out, err = run_cli(capsys, 'export', source, tmp_path / 'hf', '--no-progress')
        lines = [line for line in err.splitlines() if line.startswith('rlp export:')]
        assert rc == 2 and len(lines) == 1 and message in lines[0] and str(source) in lines[0], (source, err)
        assert not (tmp_path / 'hf').exists() and out == ''
    good = train_run(tokenizer, tmp_path / 'good', batches=1)
    rc, _, err = run_cli(capsys, 'export', good.save_folder, tmp_path / 'hf', '--tokenizer', tmp_path / 'nope')
    assert rc == 2 and '--tokenizer' in err and 'nope' in err and not (tmp_path / 'hf').exists()
    rc, _, err = run_cli(capsys, 'export', good.save_folder, tmp_path / 'hf', '--tokenizer', _tagless(tmp_path))
    assert rc == 2 and 'lacks the think tags <think> </think>' in err and not (tmp_path / 'hf').exists()
    assert _leftovers(tmp_path) == []
    # a run whose tags are plain text (rlp.template.tags: text) needs no tag tokens: the same tokenizer is accepted
    cfg = rlp_config(tokenizer)
    cfg.template = TemplateConfig(tags='text', open_tag=' Hmm,', close_tag=' so)')
    text = train_run(tokenizer, tmp_path / 'text', batches=1, config=cfg)
    rc, _, err = run_cli(capsys, 'export', text.save_folder, tmp_path / 'hf', '--tokenizer', _tagless(tmp_path))
    assert rc == 0 and (tmp_path / 'hf' / 'config.json').is_file(), err


def test_overwrite_replaces_only_an_exported_model(trained, tmp_path, capsys):
    """--overwrite never replaces a folder export did not write: a run folder (the save folder of checkpoints, the
    run folder above it), a folder of notes, and an exported folder into which something else was put later are
    all refused with exit 2 and left byte for byte; an exported folder is replaced."""

    def snapshot(root):
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}

    notes = tmp_path / 'notes'
    notes.mkdir()
    (notes / 'todo.txt').write_text('mine')
    exported = tmp_path / 'hf'
    assert run_cli(capsys, 'export', trained.save_folder, exported, '--no-progress')[0] == 0
    (exported / 'checkpoints').mkdir()
    (exported / 'checkpoints' / 'ep0-ba1-rank0.pt').write_bytes(b'later')
    for target in (trained.save_folder, trained.save_folder.parent, notes, exported):
        before = snapshot(target)
        rc, _, err = run_cli(capsys, 'export', trained.save_folder, target, '--overwrite', '--no-progress')
        assert rc == 2 and str(target) in err and len(err.strip().splitlines()) == 1, err
        assert 'rlp export' in err and 'choose' in err, err
        assert snapshot(target) == before
    (exported / 'checkpoints' / 'ep0-ba1-rank0.pt').unlink()
    (exported / 'checkpoints').rmdir()
    rc, _, err = run_cli(
        capsys, 'export', trained.save_folder, exported, '--weights', 'ema', '--overwrite', '--no-progress'
    )
    assert rc == 0, err
    assert _leftovers(tmp_path) == []


def test_exported_files_follow_the_umask(trained, tmp_path, capsys):
    """Under umask 022 the exported folder is 0755 and every file in it 0644 (a temporary folder is 0700 and its
    files may be 0600: they must not stay private)."""
    old = os.umask(0o022)
    try:
        assert run_cli(capsys, 'export', trained.save_folder, tmp_path / 'hf', '--no-progress')[0] == 0
    finally:
        os.umask(old)
    out = tmp_path / 'hf'
    assert oct(out.stat().st_mode & 0o777) == oct(0o755)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()}
    assert set(modes.values()) == {oct(0o644)}, modes


@pytest.mark.parametrize(
    'fault, code, words',
    [
        (KeyboardInterrupt(), 130, ['interrupted', 'nothing was written']),
        (OSError(28, 'No space left on device', 'model.safetensors'), 1, ['No space left', 'free space']),
        (OSError(13, 'Permission denied', 'config.json'), 1, ['Permission denied', 'writable']),
    ],
    ids=['ctrl-c', 'enospc', 'eacces'],
)
def test_interruption_and_os_errors_leave_nothing(trained, tmp_path, capsys, monkeypatch, fault, code, words):
    """Ctrl-C, a full disk and a refused write while the folder is written (raised where the files get their modes,
    after every file was written): one line, exit 130 or 1, no OUT_DIR and no temporary sibling left."""
    from rlp.tools import export
    from rlp.tools.cli import main

    def fail(folder):
        raise fault

    monkeypatch.setattr(export, '_publish_modes', fail)
    rc = main(['export', str(trained.save_folder), str(tmp_path / 'hf'), '--no-progress'])
    err = capsys.readouterr().err
    assert rc == code and len(err.strip().splitlines()) == 1 and 'Traceback' not in err, err
    assert err.startswith('rlp export: ') and all(w in err for w in words), err
    assert not (tmp_path / 'hf').exists() and _leftovers(tmp_path) == []
