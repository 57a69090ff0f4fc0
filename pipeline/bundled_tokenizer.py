"""The bundled tokenizer: a small byte-level BPE trained locally on the synthetic corpus, shipped in the repo.

Nothing is downloaded at run time, so the demo and the tests use this tokenizer. It behaves like GPT-2's: it adds
no BOS or EOS by itself (``rlp-data prepare`` therefore needs ``--eos-text '<|endoftext|>'``), and
``<|endoftext|>`` is both its EOS and its padding token. ``<think>`` and ``</think>`` are single special tokens.
Digits are always split into single-digit tokens, so that arithmetic is written one digit per token.

The files live in ``pipeline/assets/tokenizer`` (a few tens of KB). Rebuild them with
``python -m pipeline.bundled_tokenizer`` after changing the corpus or the settings below; training is
deterministic for a given ``tokenizers`` version.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.synthetic import generate_documents

# tokenizers and transformers load inside the functions that train or load the tokenizer: importing this module
# for the tokenizer's folder (``bundled_tokenizer_dir``) stays cheap.
__all__ = [
    'EOS_TEXT',
    'SPECIAL_TOKENS',
    'VOCAB_SIZE',
    'build_tokenizer',
    'bundled_tokenizer_dir',
    'load_bundled_tokenizer',
]

EOS_TEXT = '<|endoftext|>'
SPECIAL_TOKENS = [EOS_TEXT, '<think>', '</think>']
VOCAB_SIZE = 512
_TRAINING_DOCS = 4000


def bundled_tokenizer_dir() -> Path:
    """The folder holding the bundled tokenizer (loadable with ``AutoTokenizer.from_pretrained``)."""
    return Path(__file__).resolve().parent / 'assets' / 'tokenizer'


def build_tokenizer(save_dir: str | Path | None = None, vocab_size: int = VOCAB_SIZE, seed: int = 0):
    """Train the byte-level BPE on the synthetic corpus and return it as a ``PreTrainedTokenizerFast``.

    Args:
        save_dir: when given, the tokenizer is also saved there with ``save_pretrained``.
        vocab_size: target vocabulary size, special tokens included. Default: 512.
        seed: seed of the synthetic corpus used for training. Default: 0.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(generate_documents(_TRAINING_DOCS, seed=seed, think_fraction=0.0), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TEXT,
        pad_token=EOS_TEXT,
        extra_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=1 << 20,
    )
    if save_dir is not None:
        fast.save_pretrained(str(save_dir))
    return fast


def load_bundled_tokenizer():
    """Load the bundled tokenizer from :func:`bundled_tokenizer_dir`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_tokenizer_dir()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description='Rebuild the bundled tokenizer files in pipeline/assets/tokenizer.')
    parser.add_argument('--out', default=str(bundled_tokenizer_dir()), help='output folder (default: %(default)s)')
    args = parser.parse_args(argv)
    tok = build_tokenizer(args.out)
    print(f'saved a {len(tok)}-token tokenizer to {args.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
