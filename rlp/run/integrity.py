"""What training reads is what ``rlp-data prepare`` wrote: shard hashes on first open, the tokenizer compared.

Shards. Each shard of a stream is checked once per process, the first time the process needs it, against the
hashes that ``index.json`` records (``xxh64`` as ``rlp-data prepare`` writes them; a stream's own
``validate_hash`` algorithm when the recipe sets one; any algorithm streaming knows otherwise):

* the decompressed copy (``shard.*.mds``), when one is on disk, before a sample of it is read: it is what
  training reads, and a copy that an earlier run or another tool left in the cache is otherwise trusted blindly;
* else the compressed file (``shard.*.mds.zstd``) that is about to be decompressed (a local stream, a kept
  download), and the decompressed copy right after streaming wrote it (a fresh download).

streaming's own ``validate_hash`` does not cover this: it checks only files it has just downloaded or is about to
decompress, never a decompressed copy that is already there, and a stream without ``remote`` downloads nothing.
A failed check raises :class:`DataIntegrityError`: one line naming the stream, the file and the fix. Measured
cost (``bench/shard_hash.py``, 2 shared CPU cores, file in the page cache): xxh64 of a 64 MB decompressed shard
16 ms, the whole first-open check 16-34 ms, against 180 ms for streaming's zstd decompression of the same shard.

Tokenizer. :func:`check_stream_tokenizers` compares the recipe's tokenizer (name, length, and the hash
``rlp-data prepare`` records, :func:`pipeline.tokenize.tokenizer.tokenizer_hash`) with each stream's
``manifest.json`` at start-up; a stream without a manifest (an llm-foundry dataset) is logged and skipped.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any, Optional

import xxhash
import zstd
from streaming.base.hashing import get_hash, get_hashes
from transformers import AutoTokenizer

from pipeline.bundled_tokenizer import bundled_tokenizer_dir
from pipeline.errors import DataError
from pipeline.storage import remote
from pipeline.tokenize.tokenizer import tokenizer_hash
from rlp.run.recipe_freeform import check_tokenizer_kwargs
from rlp.run.recipe_schema import ConfigError, DataConfig, TokenizerConfig

__all__ = ['DataIntegrityError', 'ShardChecker', 'check_stream_tokenizers', 'file_hash', 'read_manifest']

log = logging.getLogger('rlp.data')


class DataIntegrityError(RuntimeError):
    """Training data that is not what was prepared; the message is one line with the fix.

    torch's DataLoader re-raises a worker's exception as ``type(exc)(text)`` where the text is ``Caught ... in
    DataLoader worker process N.`` plus the worker's whole traceback; only its last line (ours) is kept.
    """

    def __init__(self, message: str):
        if '\nOriginal Traceback' in message:
            message = message.rstrip().splitlines()[-1].split(f'{type(self).__name__}: ', 1)[-1]
        super().__init__(message)


def file_hash(path: str, algo: str) -> str:
    """Hex digest of a file as ``index.json`` records it (xxh64 read in 8 MB blocks; others through streaming)."""
    if algo == 'xxh64':
        h = xxhash.xxh64()
        with open(path, 'rb') as fh:
            while block := fh.read(1 << 23):
                h.update(block)
        return h.hexdigest()
    with open(path, 'rb') as fh:
        return get_hash(algo, fh.read())


class ShardChecker:
    """Checks one stream's shard files against its ``index.json`` (see the module docstring).

    Args:
        name: the stream's name in the recipe (``data.streams.<name>``).
        remote: where the stream's shards come from (None: read in place from ``folder``).
        folder: the local folder holding ``index.json`` and the shards (the cache folder of a remote stream).
        algo: the hash algorithm to prefer (the stream's ``validate_hash``), or None for xxh64.
    """

    def __init__(self, name: str, remote: Optional[str], folder: str, algo: Optional[str] = None):
        self.name, self.remote, self.folder, self.algo = name, remote, folder, algo
        self._warned = False
        self._ok: set[str] = set()  # files this process has checked

    def _pick(self, hashes: dict[str, str]) -> Optional[str]:
        for algo in (self.algo, 'xxh64', *sorted(hashes)):
            if algo in hashes and algo in get_hashes():
                return algo
        return None

    def _check(self, path: str, info: Any, what: str, fix: str) -> None:
        algo = self._pick(dict(info.hashes or {}))
        if algo is None:
            if not self._warned:
                self._warned = True
                log.warning(
                    'data.streams.%s: index.json records no shard hashes (llm-foundry writes none by default); '
                    'its shards are not checked',
                    self.name,
                )
            return
        if path in self._ok:
            return
        if os.path.getsize(path) != info.bytes or file_hash(path, algo) != info.hashes[algo]:
            raise DataIntegrityError(
                f'data.streams.{self.name}: {what} {path} does not match its size/{algo} in index.json (corrupt '
                f'or truncated); fix: {fix}'
            )
        self._ok.add(path)

    def _fixes(self, zip_name: Optional[str]) -> tuple[str, str]:
        """(fix for a bad decompressed copy, fix for a bad shard as stored)."""
        source = self.remote or self.folder
        again = f'if it fails again, run rlp-data verify {source} and prepare the data again (--overwrite)'
        if self.remote is not None:
            cache = f'delete the cache folder {self.folder} and rerun (the shards are downloaded again); {again}'
            return cache, cache
        rebuilt = f'delete it and rerun (it is rebuilt from {zip_name}); {again}'
        stored = (
            f'prepare the data again (rlp-data prepare ... --overwrite); rlp-data verify {self.folder} lists '
            'every damaged shard'
        )
        return (rebuilt if zip_name else stored), stored

    def check_present(self, shard: Any) -> bool:
        """Check what of ``shard`` is on disk now; True when its decompressed form was checked (the shard is done).

        The decompressed copy is checked when present (training reads it); else a compressed file about to be
        decompressed. Raises :class:`DataIntegrityError` on a mismatch.
        """
        for raw_info, zip_info in shard.file_pairs:
            raw = os.path.join(self.folder, raw_info.basename)
            zip_name = zip_info.basename if zip_info else None
            bad_copy, bad_stored = self._fixes(zip_name)
            try:
                if os.path.isfile(raw):
                    what = f'the decompressed copy of shard {zip_name},' if zip_name else 'shard'
                    self._check(raw, raw_info, what, bad_copy if zip_name else bad_stored)
                    continue
                if zip_name and os.path.isfile(os.path.join(self.folder, zip_name)):
                    where = f'downloaded from {self.remote},' if self.remote else ''
                    self._check(os.path.join(self.folder, zip_name), zip_info, f'shard {where}'.strip(), bad_stored)
            except FileNotFoundError:  # evicted from the cache meanwhile: checked when it is back
                pass
            return False
        return True

    def explain(self, shard: Any, exc: BaseException) -> Optional[DataIntegrityError]:
        """A one-line error for a failure of streaming to decompress or validate ``shard``; None for other errors."""
        text = str(exc)
        raw_info, zip_info = shard.file_pairs[0]
        name = zip_info.basename if zip_info else raw_info.basename
        where = f'downloaded from {self.remote}' if self.remote else f'in {self.folder}'
        # streaming 0.13: a shard absent from a local stream raises ValueError('In the absence of local dataset, ...')
        # from its downloader; an object absent from a remote one, FileNotFoundError.
        if isinstance(exc, FileNotFoundError) or text.startswith('In the absence of local dataset'):
            source = self.remote or self.folder
            return DataIntegrityError(
                f'data.streams.{self.name}: shard {name} listed in index.json is missing from {source}; fix: '
                f'run rlp-data verify {source} and prepare the data again (rlp-data prepare ... --overwrite)'
            )
        if not (isinstance(exc, zstd.Error) or (isinstance(exc, ValueError) and text.startswith('Checksum failure'))):
            return None
        return DataIntegrityError(
            f'data.streams.{self.name}: shard {name} {where} cannot be read ({type(exc).__name__}: '
            f'{" ".join(text.split())[:200]}): corrupt or truncated; fix: {self._fixes(None)[1]}'
        )


def read_manifest(name: str, folder: str) -> Optional[dict]:
    """The stream's ``manifest.json`` beside its ``index.json`` (local folder or object-store prefix), or None."""
    try:
        if remote.is_remote(folder):
            if 'manifest.json' not in remote.list_objects(folder):
                return None
            with tempfile.TemporaryDirectory(prefix='rlp-manifest-') as tmp:
                text = remote.download(remote.join(folder, 'manifest.json'), os.path.join(tmp, 'm.json')).read_text()
        else:
            path = os.path.join(folder, 'manifest.json')
            if not os.path.isfile(path):
                return None
            with open(path) as fh:
                text = fh.read()
        return json.loads(text)
    except DataError as err:
        raise ConfigError(f'data.streams.{name}: cannot read its manifest.json: {err}') from None
    except (OSError, ValueError) as err:
        raise ConfigError(
            f'data.streams.{name}: {folder}/manifest.json is unreadable ({err}); fix: prepare the data again'
        ) from None


def _recipe_tokenizer(cfg: TokenizerConfig) -> tuple[int, str]:
    """(length, hash) of the recipe's tokenizer as loaded from its files (before training adds pad or tags)."""
    name = str(bundled_tokenizer_dir()) if cfg.name_or_path == 'bundled' else cfg.name_or_path
    try:
        tok = AutoTokenizer.from_pretrained(name, **cfg.kwargs)
    except Exception as err:
        raise ConfigError(
            f'tokenizer.name_or_path={cfg.name_or_path!r} cannot be loaded ({type(err).__name__}: '
            f'{" ".join(str(err).split())[:200]}); give a local tokenizer folder, a reachable hub name, or "bundled"'
        ) from None
    check_tokenizer_kwargs(tok, cfg.kwargs)
    return len(tok), tokenizer_hash(tok)


def _check_seq_len(name: str, folder: str, manifest: dict, seq_len: int) -> None:
    theirs, pack = manifest.get('seq_len'), manifest.get('pack')
    if not isinstance(theirs, int) or theirs == seq_len or (pack == 'none' and theirs < seq_len):
        return
    effect = 'each sample would be cut to' if theirs > seq_len else 'each packed sample would be padded to'
    raise ConfigError(
        f'data.streams.{name} was prepared with seq_len {theirs} (pack {pack}) but the recipe has '
        f'data.seq_len={seq_len}: {effect} {seq_len} tokens; fix: set data.seq_len={theirs}, or prepare {folder} '
        f'again with --seq-len {seq_len}'
    )


def check_stream_tokenizers(data: DataConfig, tokenizer: TokenizerConfig) -> None:
    """Refuse a stream whose ``manifest.json`` names another tokenizer or another ``seq_len`` than the recipe's
    (ConfigError, one line).

    Tokenizers are equal with the same hash and vocabulary size (the name may differ: a hub name and a local copy
    are the same tokenizer); ``data.streams.<name>.allow_tokenizer_mismatch: true`` turns that refusal into a
    warning. ``seq_len`` must equal ``data.seq_len`` (a longer sample would be cut, a shorter packed one padded); data
    prepared with ``--pack none`` (samples of 1..seq_len tokens) may be shorter than ``data.seq_len``.
    """
    mine: Optional[tuple[int, str]] = None
    for name, s in data.streams.items():
        source = s.remote if s.remote is not None else s.local
        folder = source.rstrip('/') + '/' + s.split if s.split else source
        manifest = read_manifest(name, folder)
        if manifest is None:
            log.info(
                'data.streams.%s: no manifest.json in %s (not written by rlp-data prepare, e.g. llm-foundry): '
                "its tokenizer is not compared with the recipe's",
                name,
                folder,
            )
            continue
        _check_seq_len(name, folder, manifest, data.seq_len)
        theirs = manifest.get('tokenizer') or {}
        mine = mine or _recipe_tokenizer(tokenizer)
        if (theirs.get('vocab_size'), theirs.get('hash')) == mine:
            continue
        message = (
            f'data.streams.{name} was prepared with tokenizer {theirs.get("name")!r} ({theirs.get("vocab_size")} '
            f'tokens, {theirs.get("hash")}) but the recipe uses tokenizer.name_or_path={tokenizer.name_or_path!r} '
            f'({mine[0]} tokens, {mine[1]}); token ids mean different things under the two; fix: set '
            f'tokenizer.name_or_path to the data\'s tokenizer, or prepare {folder} again with --tokenizer '
            f'{tokenizer.name_or_path}'
        )
        if not s.allow_tokenizer_mismatch:
            raise ConfigError(message + f' (or set data.streams.{name}.allow_tokenizer_mismatch=true if you know '
                              'the ids agree)')  # fmt: skip
        log.warning('%s; training anyway: data.streams.%s.allow_tokenizer_mismatch is true', message, name)
