"""Tokeniser loading, the explicit BOS/EOS policy, batch encoding and the choice of the token dtype.

Each document becomes ``bos + tokenizer(text) + eos`` where ``tokenizer(text)`` uses the tokenizer's own
special-token behaviour (``add_special_tokens=True``: Llama-style tokenizers add their BOS themselves) and
``bos``/``eos`` are ``--bos-text`` / ``--eos-text`` tokenised once with ``add_special_tokens=False``.
A tokenizer that adds neither a BOS nor an EOS, used without ``--eos-text``/``--bos-text``, is refused: the
packed stream would have no document separators (the GPT-2 trap, llm-foundry#199/#843).

The tokenizer hash is xxh64 over the fast tokenizer's serialised JSON (vocab, merges, normaliser, special tokens)
or, for slow tokenizers, over the sorted vocabulary; it identifies the tokenizer independently of where it is
stored.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import xxhash

from pipeline.errors import DataError, UsageError, one_line

# transformers loads inside the function that loads a tokenizer (it takes seconds to import): the choice of
# the token dtype and the BOS/EOS policy are usable without it.
__all__ = [
    'TokenPolicy',
    'load_tokenizer',
    'make_policy',
    'tokenizer_hash',
    'encode_batch',
    'choose_dtype',
    'to_array',
]

_PROBE = 'hello world'


@dataclass(frozen=True)
class TokenPolicy:
    """What surrounds every document's tokens; recorded verbatim in the manifest."""

    bos_text: str | None
    eos_text: str | None
    bos_ids: list[int] = field(default_factory=list)
    eos_ids: list[int] = field(default_factory=list)
    tokenizer_adds_bos: list[int] = field(default_factory=list)
    tokenizer_adds_eos: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        d['separator'] = 'eos' if (self.eos_ids or self.tokenizer_adds_eos) else 'bos'
        return d


def load_tokenizer(name: str):
    """Load a HF tokenizer by hub name or local folder, raising :class:`DataError` with the fix on failure."""
    from transformers import AutoTokenizer

    looks_local = name.startswith(('.', '/', '~')) or name.count('/') > 1
    if looks_local and not os.path.isdir(os.path.expanduser(name)):
        raise DataError(
            f'tokenizer {name!r} not found: no such folder; rule: --tokenizer is a hub name or a folder '
            'with tokenizer files; fix: check the path'
        )
    try:
        return AutoTokenizer.from_pretrained(os.path.expanduser(name))
    except Exception as exc:
        raise DataError(
            f'cannot load tokenizer {name!r} ({one_line(exc, 200)}); rule: --tokenizer is a hub name or a '
            'folder loadable with AutoTokenizer.from_pretrained; fix: check the name, network access or '
            'pass a local folder'
        ) from None


def tokenizer_hash(tok) -> str:
    """``xxh64:<hex>`` identifying the tokenizer's behaviour (see module docstring)."""
    backend = getattr(tok, 'backend_tokenizer', None)
    if backend is not None:
        payload = backend.to_str()
    else:
        payload = json.dumps(sorted(tok.get_vocab().items()))
    extra = json.dumps([tok.bos_token, tok.eos_token, tok.pad_token, tok.all_special_tokens])
    return 'xxh64:' + xxhash.xxh64((payload + extra).encode()).hexdigest()


def _text_ids(tok, text: str | None, flag: str) -> list[int]:
    if text is None:
        return []
    if text == '':
        raise UsageError(
            f'{flag} is empty; rule: it must be a non-empty string; fix: omit it or pass e.g. '
            f"{flag} '{tok.eos_token or '</s>'}'"
        )
    return list(tok(text, add_special_tokens=False)['input_ids'])


def make_policy(tok, bos_text: str | None, eos_text: str | None) -> TokenPolicy:
    """Work out what the tokenizer adds itself and what the flags add; refuse a stream without separators."""
    with_special = list(tok(_PROBE, add_special_tokens=True)['input_ids'])
    plain = list(tok(_PROBE, add_special_tokens=False)['input_ids'])
    k = next((i for i in range(len(with_special) - len(plain) + 1) if with_special[i : i + len(plain)] == plain), 0)
    adds_bos, adds_eos = with_special[:k], with_special[k + len(plain) :]
    bos_ids, eos_ids = _text_ids(tok, bos_text, '--bos-text'), _text_ids(tok, eos_text, '--eos-text')
    if not (adds_bos or adds_eos or bos_ids or eos_ids):
        hint = tok.eos_token or '<|endoftext|>'
        raise UsageError(
            f'tokenizer {getattr(tok, "name_or_path", "?")!r} adds neither a BOS nor an EOS token and no '
            f"--eos-text was given; rule: documents must be separated in the packed stream; fix: pass "
            f"--eos-text '{hint}'"
        )
    if eos_ids and adds_eos and eos_ids == adds_eos:
        raise UsageError(
            f'--eos-text {eos_text!r} duplicates the EOS the tokenizer already appends; rule: one '
            'separator per document; fix: drop --eos-text'
        )
    if bos_ids and adds_bos and bos_ids == adds_bos:
        raise UsageError(
            f'--bos-text {bos_text!r} duplicates the BOS the tokenizer already prepends; rule: one BOS '
            'per document; fix: drop --bos-text'
        )
    return TokenPolicy(bos_text, eos_text, bos_ids, eos_ids, adds_bos, adds_eos)


def choose_dtype(requested: str, vocab_size: int) -> str:
    """``uint16`` when every id fits (vocab <= 65536) and ``auto`` was asked, else ``uint32``; checks a forced one."""
    if requested == 'auto':
        return 'uint16' if vocab_size <= 1 << 16 else 'uint32'
    if requested == 'uint16' and vocab_size > 1 << 16:
        raise UsageError(
            f'--dtype uint16 cannot hold this vocabulary of {vocab_size} tokens; rule: uint16 holds ids '
            '< 65536; fix: use --dtype uint32 or auto'
        )
    return requested


def encode_batch(tok, texts: list[str], policy: TokenPolicy) -> tuple[list[int], list[int]]:
    """Tokenise ``texts`` -> (flat token list of all documents with bos/eos, per-document lengths)."""
    enc = tok(texts, add_special_tokens=True, return_attention_mask=False, return_token_type_ids=False)['input_ids']
    bos, eos = policy.bos_ids, policy.eos_ids
    flat: list[int] = []
    lengths: list[int] = []
    extra = len(bos) + len(eos)
    for ids in enc:
        if bos:
            flat.extend(bos)
        flat.extend(ids)
        if eos:
            flat.extend(eos)
        lengths.append(len(ids) + extra)
    return flat, lengths


def to_array(flat: list[int], dtype: str) -> np.ndarray:
    """Flat ids as a numpy array of the output dtype."""
    return np.array(flat, dtype=np.dtype(dtype))
