"""``rlp-data inspect PATH``: print the manifest, the counts and a few decoded samples of a prepared dataset."""

from __future__ import annotations

import json

from pipeline.dataset.files import DatasetFiles
from pipeline.dataset.shards import decode_shard, decompress
from pipeline.tokenize.tokenizer import load_tokenizer

__all__ = ['inspect_dataset']


def _load_tokenizer(name: str):
    try:
        return load_tokenizer(name)
    except Exception:
        return None


def inspect_dataset(path: str, n_samples: int = 3, log=print) -> dict:
    """Print what ``path`` holds; return the manifest."""
    with DatasetFiles(path) as files:
        manifest = files.json('manifest.json')
        index = files.json('index.json')
        c = manifest['counts']
        log(f'dataset {path}')
        log(
            f'  tokenizer {manifest["tokenizer"]["name"]} (vocab {manifest["tokenizer"]["vocab_size"]}, '
            f'{manifest["tokenizer"]["hash"]}), dtype {manifest["dtype"]}, seq_len {manifest["seq_len"]}, '
            f'pack {manifest["pack"]}'
        )
        pol = manifest['policy']
        log(
            f'  bos/eos: --bos-text {pol["bos_text"]!r} -> {pol["bos_ids"]}, --eos-text {pol["eos_text"]!r} -> '
            f'{pol["eos_ids"]}, tokenizer adds bos {pol["tokenizer_adds_bos"]} eos {pol["tokenizer_adds_eos"]}'
        )
        log(
            f'  documents {c["documents"]:,} | tokens {c["tokens"]:,} | samples {c["samples"]:,} | shards '
            f'{len(index["shards"])} | dropped tail tokens {c["dropped_tail_tokens"]:,} | empty skipped '
            f'{c["empty_documents_skipped"]:,} | bad records skipped {c["bad_records_skipped"]:,}'
        )
        for inp in manifest['inputs']:
            log(f'  input {inp["source"]} ({inp["kind"]}, {inp["documents"]:,} docs, {inp["content_hash"]})')
        log(
            f'  tool {manifest["tool"]["name"]} {manifest["tool"]["version"]}; arguments '
            f'{json.dumps(manifest["arguments"])}'
        )
        tok = _load_tokenizer(manifest['tokenizer']['name']) if n_samples else None
        shown = 0
        for entry in index['shards']:
            if shown >= n_samples:
                break
            zip_info = entry.get('zip_data') or entry['raw_data']
            raw = decompress(entry, files.local(zip_info['basename']).read_bytes())
            for sample in decode_shard(entry, raw):
                ids = sample['tokens'].tolist()
                log(f'--- sample {shown}: {len(ids)} tokens, doc_starts {sample["doc_starts"].tolist()}')
                log(repr(tok.decode(ids)) if tok is not None else f'ids {ids[:64]}...')
                shown += 1
                if shown >= n_samples:
                    break
        return manifest
