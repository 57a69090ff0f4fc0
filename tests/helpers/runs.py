"""Helpers for the run-tool tests (``rlp export | plot | thoughts``): real checkpoints from a real composer.Trainer,
Composer's sharded-checkpoint layout, uploads to the local S3 server, and the ``rlp`` command run in-process."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from rlp.tools.cli import SUBCOMMANDS, CliError
from tests.helpers.rlp_batches import VOCAB, Rows, rlp_config, skipping_batch
from tests.helpers.tiny_models import build_tiny_model


@dataclass
class TrainedRun:
    """What a short training left: the trained HF module, the RLP algorithm (or None) and the save folder."""

    hf: Any
    algo: Any
    save_folder: Path

    def checkpoint(self, batch: int) -> Path:
        """The monolithic checkpoint written after ``batch`` batches (one batch per epoch in these runs)."""
        matches = sorted(self.save_folder.glob(f'ep*-ba{batch}-rank0.pt'))
        assert len(matches) == 1, (batch, sorted(p.name for p in self.save_folder.iterdir()))
        return matches[0]


def train_run(
    tokenizer,
    save_folder: Path,
    *,
    batches: int = 2,
    rlp: bool = True,
    save_tokenizer: bool = True,
    model: Optional[torch.nn.Module] = None,
    config: Any = None,
) -> TrainedRun:
    """Train a tiny random-init Llama (no dropout, plain tied head) with SGD for ``batches`` batches of 8 rows in a
    real ``composer.Trainer`` on CPU, RLP on (tau 0.5, so the EMA teacher differs from the policy) unless ``rlp`` is
    False (``config``: another RLPConfig), saving a monolithic checkpoint after every batch into ``save_folder``."""
    from composer import Trainer
    from composer.models import HuggingFaceModel

    from rlp.run.algorithm import RLP

    hf = model if model is not None else build_tiny_model('llama', VOCAB, seed=0)
    wrapped = HuggingFaceModel(hf, tokenizer=tokenizer if save_tokenizer else None, use_logits=True)
    algo = RLP(config or rlp_config(tokenizer), seed=11) if rlp else None
    trainer = Trainer(
        model=wrapped,
        train_dataloader=torch.utils.data.DataLoader(Rows(skipping_batch(tokenizer)), batch_size=8),
        max_duration=f'{batches}ba',
        optimizers=torch.optim.SGD(wrapped.parameters(), lr=0.5),
        algorithms=[algo] if algo else [],
        device='cpu',
        save_folder=str(save_folder),
        save_interval='1ba',
        progress_bar=False,
        log_to_console=False,
        seed=3,
    )
    trainer.fit()
    trainer.close()
    return TrainedRun(hf=hf.eval(), algo=algo, save_folder=Path(save_folder))


def write_sharded(checkpoint_file: Path, folder: Path) -> Path:
    """Re-save a monolithic Composer checkpoint in Composer's sharded layout and return the checkpoint folder.

    Composer 0.32.1 (``composer.utils.checkpoint._save_checkpoint``) saves a sharded checkpoint as
    ``dist_cp.save(state_dict={'state': state.state_dict(), 'rng': ...},
    storage_writer=FileSystemWriter('<save_folder>/ep<E>-ba<B>'), planner=DefaultSavePlanner(
    dedup_save_to_lowest_rank=True))``; the same call is made here on the same state dict, world size 1 (so the
    model tensors are whole, where FSDP would hand DTensor shards that the metadata stitches back together). The
    folder gets ``__0_0.distcp`` and ``.metadata``, as Composer's do.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultSavePlanner

    ck = torch.load(checkpoint_file, map_location='cpu', weights_only=False)
    out = Path(folder) / checkpoint_file.name.replace('-rank0.pt', '')
    dcp.save(
        state_dict={'state': ck['state'], 'rng': ck['rng']},
        storage_writer=dcp.FileSystemWriter(str(out)),
        planner=DefaultSavePlanner(dedup_save_to_lowest_rank=True),
    )
    assert sorted(os.listdir(out)) == ['.metadata', '__0_0.distcp']
    return out


def upload(s3, local: Path, prefix: str) -> str:
    """Upload every file under ``local`` to ``s3://<bucket>/<prefix>/...`` (relative paths kept); return the URI."""
    local = Path(local)
    for path in sorted(p for p in local.rglob('*') if p.is_file() and not p.is_symlink()):
        s3.client.upload_file(str(path), s3.bucket, f'{prefix}/{path.relative_to(local).as_posix()}')
    return f's3://{s3.bucket}/{prefix}'


def run_cli(capsys, command: str, *argv: Any) -> tuple[int, str, str]:
    """Run one ``rlp`` subcommand in-process as ``rlp.tools.cli.main`` does (its parser from ``add_parser``, a
    :class:`CliError` printed as ``rlp <command>: <message>`` with exit code 2); return (code, stdout, stderr).

    Only the command's module is imported, so these tests do not depend on the other subcommands."""
    mod = importlib.import_module(SUBCOMMANDS[command])
    parser = argparse.ArgumentParser(prog='rlp')
    sub = parser.add_subparsers(dest='command', required=True)
    mod.add_parser(sub)
    args = parser.parse_args([command, *(str(a) for a in argv)])
    try:
        rc = int(mod.run(args) or 0)
    except CliError as err:
        print(f'rlp {args.command}: {err}', file=sys.stderr)
        rc = 2
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The model's logits for ``input_ids`` in eval mode, without grad."""
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits
