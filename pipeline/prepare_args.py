"""The arguments of ``rlp-data prepare`` as one dataclass, shared by :mod:`pipeline.prepare` and its workers.

Kept apart from :mod:`pipeline.prepare` so that :mod:`pipeline.workers` can name the type without importing the
orchestration. The checks of the values are in :func:`pipeline.prepare.prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ['PrepareArgs']


@dataclass
class PrepareArgs:
    """Arguments of ``rlp-data prepare`` (see ``rlp-data prepare --help``)."""

    inputs: list[str]
    tokenizer: str
    seq_len: int
    out: str
    pack: str = 'concat'
    dtype: str = 'auto'
    text_field: str = 'text'
    bos_text: str | None = None
    eos_text: str | None = None
    on_bad_record: str = 'fail'
    workers: int = 1
    overwrite: bool = False
    staging: str | None = None
    chunk_mb: float = 16.0
    shard_mb: float = 64.0
    progress: bool = True

    def dataset_arguments(self) -> dict:
        """The arguments that define the dataset (recorded in the manifest; output/parallelism excluded)."""
        keys = (
            'inputs',
            'tokenizer',
            'seq_len',
            'pack',
            'dtype',
            'text_field',
            'bos_text',
            'eos_text',
            'on_bad_record',
            'shard_mb',
        )
        return {k: getattr(self, k) for k in keys}
