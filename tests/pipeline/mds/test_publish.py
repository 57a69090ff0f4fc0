"""Object-store output (publishing).

* S3 output through the local moto server: read back with ``streaming.StreamingDataset(remote='s3://...')`` and
  compared sample by sample with the same preparation written to a local folder; ``inspect``/``verify`` on the URI.
* An upload that dies after the first part resumes, on a re-run of the same command, to the same objects as an
  uninterrupted upload.
"""

from __future__ import annotations

import numpy as np

from pipeline.synthetic import write_jsonl
from tests.helpers.pipeline_data import prepare, read_samples, run, write_corpus


def test_s3_output_reads_back_with_streaming(s3, tmp_path, capsys):
    from streaming import StreamingDataset

    corpus = write_jsonl(tmp_path / 'c.jsonl', 80)
    local = tmp_path / 'local'
    assert prepare(capsys, [str(corpus)], local, 48)[0] == 0
    uri = f's3://{s3.bucket}/datasets/c'
    rc, _, err = prepare(capsys, [str(corpus)], uri, 48, '--staging', tmp_path / 'stg', '--workers', 2)
    assert rc == 0, err
    keys = s3.list('datasets/c/')
    assert 'datasets/c/index.json' in keys and 'datasets/c/manifest.json' in keys
    assert not (tmp_path / 'stg').exists()
    ds = StreamingDataset(remote=uri, local=str(tmp_path / 'cache'), shuffle=False, batch_size=1)
    expected = read_samples(local)
    assert ds.size == len(expected)
    for i, want in enumerate(expected):
        got = ds[i]
        np.testing.assert_array_equal(got['tokens'], want['tokens'])
        np.testing.assert_array_equal(got['doc_starts'], want['doc_starts'])
    remote_manifest = s3.client.get_object(Bucket=s3.bucket, Key='datasets/c/manifest.json')['Body'].read()
    assert remote_manifest == (local / 'manifest.json').read_bytes()  # same dataset, same bytes

    rc, stdout, err = run(capsys, 'verify', uri)
    assert rc == 0 and 'verified' in stdout, err
    rc, stdout, err = run(capsys, 'inspect', uri, '--samples', 1)
    assert rc == 0 and 'sample 0' in stdout and 'documents 80' in stdout, err
    rc, stdout, _ = prepare(capsys, [str(corpus)], uri, 48, '--staging', tmp_path / 'stg')
    assert rc == 0 and 'nothing to do' in stdout


def test_interrupted_upload_resumes_to_the_same_objects(s3, tmp_path, capsys, monkeypatch):
    """An upload that dies after the first part: no index.json/manifest.json on the bucket; the re-run (same
    command, same staging) uploads the rest and the bucket ends with the same objects as an uninterrupted run."""
    import pipeline.mds.publish as publish
    from pipeline.storage import remote

    corpus = write_corpus(tmp_path / 'corpus', 3, stem='p')
    ref_uri, uri = f's3://{s3.bucket}/ref', f's3://{s3.bucket}/ds'
    small = ('--shard-mb', '0.005')  # several parts, so the upload can die between two of them
    assert prepare(capsys, [str(corpus)], ref_uri, 40, '--staging', tmp_path / 'stg-ref', *small)[0] == 0

    calls = []
    real_upload = remote.upload_files

    def flaky(local_root, target, names):
        calls.append(names)
        if len(calls) == 2:
            raise RuntimeError('network died')
        return real_upload(local_root, target, names)

    monkeypatch.setattr(publish.remote, 'upload_files', flaky)
    try:
        prepare(capsys, [str(corpus)], uri, 40, '--staging', tmp_path / 'stg', *small)
    except RuntimeError:
        pass
    monkeypatch.setattr(publish.remote, 'upload_files', real_upload)  # (undo() would also drop the s3 env vars)
    keys = s3.list('ds/')
    assert keys and 'ds/index.json' not in keys and 'ds/manifest.json' not in keys
    rc, _, err = prepare(capsys, [str(corpus)], uri, 40, '--staging', tmp_path / 'stg', *small)
    assert rc == 0, err

    def objects(prefix):
        return {k[len(prefix) :]: s3.client.get_object(Bucket=s3.bucket, Key=k)['Body'].read() for k in s3.list(prefix)}

    assert objects('ds/') == objects('ref/')
