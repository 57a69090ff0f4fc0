"""Checks `rlp.run.checkpoint.find_latest_checkpoint` against the save folders Composer writes, and shows the
Composer 0.32.1 bugs it works around, each against a real Trainer and the local S3 server:
(1) a checkpoint whose `latest` pointer never reached the object store is ignored by Composer's autoresume;
(2) a stale local `./s3:/bucket/prefix/latest-rank0.pt` left by an earlier autoresume wins over newer remote
checkpoints. In both cases our discovery returns the newest complete checkpoint.
(3) a full local copy of every checkpoint uploaded to an object store stays in the temp folder; `manage_uploads`
leaves none."""

from __future__ import annotations

import pytest
import torch

from rlp.run.checkpoint import find_latest_checkpoint, set_symlink_upload_poll

VOCAB = 64


def _trainer(save_folder, max_duration, autoresume=False, load_path=None):
    from composer import Trainer
    from composer.models import HuggingFaceModel
    from torch.utils.data import DataLoader

    from tests.helpers.tiny_models import build_tiny_model

    gen = torch.Generator().manual_seed(0)
    data = [{'input_ids': ids, 'labels': ids.clone()} for ids in torch.randint(0, VOCAB, (32, 8), generator=gen)]
    model = HuggingFaceModel(build_tiny_model('gpt2', VOCAB), use_logits=True)
    trainer = Trainer(
        model=model,
        train_dataloader=DataLoader(data, batch_size=2),
        max_duration=max_duration,
        optimizers=torch.optim.SGD(model.parameters(), lr=0.01),
        device='cpu',
        run_name='ck',
        save_folder=save_folder,
        save_interval='2ba',
        autoresume=autoresume,
        load_path=load_path,
        progress_bar=False,
        seed=1,
    )
    set_symlink_upload_poll(trainer, 0.2)
    return trainer


def _batches(trainer) -> int:
    return trainer.state.timestamp.batch.value


def test_local_folder_newest_complete(tmp_path):
    """Highest batch wins; a truncated .pt (killed mid-write), the latest symlink, a sharded folder without its
    .metadata and unrelated files are ignored; a complete sharded folder counts."""
    folder = tmp_path / 'ck'
    trainer = _trainer(str(folder), '4ba')
    trainer.fit()
    trainer.close()
    assert find_latest_checkpoint(str(folder), 'ck') == f'{folder}/ep0-ba4-rank0.pt'
    (folder / 'ep0-ba6-rank0.pt').write_bytes((folder / 'ep0-ba4-rank0.pt').read_bytes()[:1000])  # truncated
    (folder / 'ep0-ba8').mkdir()  # sharded folder, .metadata not written yet
    (folder / 'ep0-ba8' / '__0_0.distcp').write_bytes(b'x')
    (folder / 'notes.txt').write_text('x')
    assert find_latest_checkpoint(str(folder), 'ck') == f'{folder}/ep0-ba4-rank0.pt'
    (folder / 'ep0-ba8' / '.metadata').write_bytes(b'x')
    assert find_latest_checkpoint(str(folder), 'ck') == f'{folder}/ep0-ba8'
    assert find_latest_checkpoint(str(tmp_path / 'empty'), 'ck') is None
    assert find_latest_checkpoint(str(tmp_path / '{run_name}'), 'ck') == f'{tmp_path}/ck/ep0-ba8'


def test_s3_listing(s3):
    """On S3 the newest ep*-ba*-rank0.pt under the prefix wins (not a longer prefix's, not the pointer)."""
    for key in (
        'run/ep0-ba2-rank0.pt',
        'run/ep0-ba10-rank0.pt',
        'run/latest-rank0.pt.symlink',
        'run-other/ep0-ba20-rank0.pt',
        'run/ep1-ba9-rank0.pt',
    ):
        s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b'x')
    assert find_latest_checkpoint(f's3://{s3.bucket}/run', 'x') == f's3://{s3.bucket}/run/ep0-ba10-rank0.pt'
    assert find_latest_checkpoint(f's3://{s3.bucket}/nothing', 'x') is None


def test_composer_autoresume_misses_checkpoint_without_symlink(s3, tmp_path, monkeypatch):
    """Bug 1: S3 holds ep0-ba4 but no `latest` pointer (a job killed before the delayed pointer upload).
    Composer's autoresume starts again at batch 0; our discovery finds ba4 and loading it resumes at batch 4."""
    monkeypatch.chdir(tmp_path)
    folder = f's3://{s3.bucket}/ckpt'
    first = _trainer(folder, '4ba')
    first.fit()
    first.close()
    s3.client.delete_object(Bucket=s3.bucket, Key='ckpt/latest-rank0.pt.symlink')
    assert s3.list('ckpt/') == ['ckpt/ep0-ba2-rank0.pt', 'ckpt/ep0-ba4-rank0.pt']

    composer_resume = _trainer(folder, '6ba', autoresume=True)
    assert _batches(composer_resume) == 0  # the bug: the checkpoint is there, Composer does not see it
    composer_resume.close()

    newest = find_latest_checkpoint(folder, 'ck')
    assert newest == f'{folder}/ep0-ba4-rank0.pt'
    ours = _trainer(f's3://{s3.bucket}/ckpt-2', '6ba', load_path=newest)
    assert _batches(ours) == 4
    ours.close()


def test_composer_autoresume_prefers_stale_local_s3_folder(s3, tmp_path, monkeypatch):
    """Bug 2: a local `s3:/bucket/prefix/latest-rank0.pt` (Composer's download folder from an earlier autoresume)
    holding ba2 wins over S3's ba4 and its pointer; our discovery returns ba4."""
    monkeypatch.chdir(tmp_path)
    folder = f's3://{s3.bucket}/ckpt'
    first = _trainer(folder, '4ba')
    first.fit()
    first.close()
    assert 'ckpt/latest-rank0.pt.symlink' in s3.list('ckpt/')
    stale = tmp_path / 's3:' / s3.bucket / 'ckpt' / 'latest-rank0.pt'
    stale.parent.mkdir(parents=True)
    s3.client.download_file(s3.bucket, 'ckpt/ep0-ba2-rank0.pt', str(stale))

    composer_resume = _trainer(folder, '6ba', autoresume=True)
    assert _batches(composer_resume) == 2  # the bug: the stale local copy beat the newer remote checkpoint
    composer_resume.close()
    assert find_latest_checkpoint(folder, 'ck') == f'{folder}/ep0-ba4-rank0.pt'


def _pt_files(folder) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob('*') if p.is_file()}


@pytest.mark.slow
def test_composer_leaves_checkpoint_copies_in_the_temp_folder(s3, tmp_path, monkeypatch):
    """Bug 3: with an s3:// save folder, a plain Composer Trainer leaves a full local copy of every uploaded
    checkpoint in the system temp folder after fit and close. With `manage_uploads` the same run leaves no file in
    the temp folder nor in the run folder, and the store holds the same checkpoints."""
    import tempfile

    from rlp.run.checkpoint import UPLOADS_DIRNAME, manage_uploads

    plain_tmp, ours_tmp = tmp_path / 'tmp-plain', tmp_path / 'tmp-ours'
    plain_tmp.mkdir(), ours_tmp.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(plain_tmp))
    plain = _trainer(f's3://{s3.bucket}/plain', '4ba')
    plain.fit()
    plain.close()
    left = {n: size for n, size in _pt_files(plain_tmp).items() if n.endswith('.pt')}
    names = sorted(n.rsplit('/', 1)[-1] for n in left)
    assert names == ['ep0-ba2-rank0.pt', 'ep0-ba4-rank0.pt', 'latest-rank0.pt'], left  # the bug (latest: a symlink)

    monkeypatch.setattr(tempfile, 'tempdir', str(ours_tmp))
    ours = _trainer(f's3://{s3.bucket}/ours', '4ba')
    manage_uploads(ours, str(tmp_path / 'out'))
    ours.fit()
    ours.close()
    assert _pt_files(ours_tmp) == {} and not (tmp_path / 'out' / UPLOADS_DIRNAME).exists()
    on_store = {k.split('/')[-1] for k in s3.list('ours/')}
    assert on_store == {k.split('/')[-1] for k in s3.list('plain/')} >= {'ep0-ba2-rank0.pt', 'ep0-ba4-rank0.pt'}
    copies = sum(size for n, size in left.items() if not n.endswith('latest-rank0.pt'))
    print(f'plain Composer left {copies} bytes of checkpoint copies in the temp folder; with manage_uploads: 0')


def test_checkpoint_batch():
    """The batch count is read from monolithic and sharded names; anything else is refused."""
    from rlp.run.checkpoint import checkpoint_batch

    assert checkpoint_batch('s3://b/run/ep0-ba40-rank0.pt') == 40
    assert checkpoint_batch('/x/ep2-ba7') == 7
    with pytest.raises(ValueError, match='not a Composer checkpoint name'):
        checkpoint_batch('/x/latest-rank0.pt')


@pytest.mark.parametrize('folder', ['gs://', 's3://'])
def test_bucketless_folder_refused(folder):
    """A save folder URI without a bucket is a clear error, not a crash inside boto."""
    from rlp.run.checkpoint import check_save_folder
    from rlp.run.recipe_schema import ConfigError

    with pytest.raises(ConfigError, match='names no bucket'):
        check_save_folder(folder, 'x')
