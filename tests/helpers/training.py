"""Helpers for the training tests: tiny MDS datasets written directly with MDSWriter, tiny recipes, launching."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
EOS_ID = 0  # the bundled tokenizer's <|endoftext|>

TINY_LLAMA = {
    'model_type': 'llama',
    'hidden_size': 32,
    'intermediate_size': 64,
    'num_hidden_layers': 2,
    'num_attention_heads': 4,
    'num_key_value_heads': 2,
    'max_position_embeddings': 256,
    'tie_word_embeddings': True,
}

# a tiny Nemotron-H (hybrid: Mamba2 M, attention *, MLP -), as a recipe's model.config
TINY_NEMOTRON_H = {
    'model_type': 'nemotron_h',
    'hidden_size': 64,
    'hybrid_override_pattern': 'M*M-',
    'num_attention_heads': 4,
    'num_key_value_heads': 2,
    'head_dim': 16,
    'intermediate_size': 128,
    'mamba_num_heads': 4,
    'mamba_head_dim': 16,
    'n_groups': 2,
    'ssm_state_size': 16,
    'conv_kernel': 4,
    'expand': 1,
    'chunk_size': 8,
    'max_position_embeddings': 256,
    'tie_word_embeddings': False,
}


def packed_samples(n_samples: int, seq_len: int, vocab: int = 500, seed: int = 0, eos_id: int = EOS_ID):
    """Documents of random length (ids in 3..vocab) joined by EOS, packed into ``seq_len`` samples.

    Returns a list of ``(tokens, doc_starts)``; a document wrapping into the next sample does not start there.
    """
    rng = np.random.default_rng(seed)
    stream, starts = [], []
    while len(stream) < n_samples * seq_len:
        starts.append(len(stream))
        n = int(rng.integers(3, seq_len))
        stream.extend(rng.integers(3, vocab, size=n).tolist() + [eos_id])
    out = []
    for i in range(n_samples):
        lo, hi = i * seq_len, (i + 1) * seq_len
        out.append((np.array(stream[lo:hi]), np.array([s - lo for s in starts if lo <= s < hi], dtype=np.int32)))
    return out


def write_mds(
    out: Any,
    samples,
    *,
    dtype: str = 'uint32',
    doc_starts: bool = True,
    legacy_bytes: bool = False,
    size_limit: int = 1 << 12,
) -> None:
    """Write ``samples`` as MDS to ``out`` (a folder, an ``s3://`` URI or a (local, remote) tuple)."""
    from streaming import MDSWriter

    if legacy_bytes:
        columns = {'tokens': 'bytes'}
    else:
        columns = {'tokens': f'ndarray:{dtype}'}
    if doc_starts:
        columns['doc_starts'] = 'ndarray:int32'
    with MDSWriter(out=out, columns=columns, compression='zstd', size_limit=size_limit) as writer:
        for tokens, starts in samples:
            arr = tokens.astype(dtype)
            row = {'tokens': arr.tobytes() if legacy_bytes else arr}
            if doc_starts:
                row['doc_starts'] = starts.astype(np.int32)
            writer.write(row)


# The RLP settings of the kill-and-resume tests (G 2, 3-token thoughts, RLP mixed with NTP) and the metrics they
# compare bitwise between a resumed and an uninterrupted run.
TINY_RLP = {
    'positions': {'unit': 'sample', 'k': 1, 'min_context': 4, 'max_context': 16},
    'rollouts': {'group_size': 2, 'temperature': 1.0, 'max_thought_tokens': 3},
    'teacher': {'kind': 'ema', 'tau': 0.9},
    'loss': {'ntp_weight': 1.0, 'rlp_weight': 1.0},
    'log': {'every_n_batches': 4},
}
COMPARED = (
    'sample_ids',
    'loss/train/total',
    'loss/train/ntp',
    'loss/train/rlp',
    'rlp/reward_mean',
    'rlp/reward_std',
    'rlp/s_pred',
    'rlp/s_ema',
    'rlp/gain_vs_ema',
    'rlp/advantage_std',
)


@contextlib.contextmanager
def environ(env: dict[str, str]):
    """``os.environ`` with ``env`` set inside the block and restored after it (e.g. to write a bucket through
    streaming, which reads the S3 endpoint and credentials from the environment)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tiny_recipe(
    *,
    streams: dict[str, dict],
    run_name: str = 'tiny',
    seq_len: int = 32,
    max_duration: str = '6ba',
    global_batch: int = 4,
    microbatch: int = 2,
    save_folder: Optional[str] = None,
    save_interval: str = '2ba',
    output_dir: str = 'runs/{run_name}',
    rlp: Optional[dict] = None,
    cache_dir: str = 'cache',
    model_config: Optional[dict] = None,
) -> dict[str, Any]:
    """A recipe mapping for a tiny random-init Llama (or ``model_config``) on the bundled tokenizer, NTP only unless
    ``rlp``."""
    return {
        'run_name': run_name,
        'seed': 7,
        'model': {'config': dict(model_config or TINY_LLAMA), 'attn_implementation': 'eager'},
        'tokenizer': {'name_or_path': 'bundled'},
        'data': {'seq_len': seq_len, 'streams': streams, 'cache_dir': cache_dir, 'clean_stale_shared_memory': False},
        'rlp': rlp,
        'trainer': {
            'max_duration': max_duration,
            'global_train_batch_size': global_batch,
            'device_train_microbatch_size': microbatch,
            'device': 'cpu',
            'save_folder': save_folder,
            'save_interval': save_interval,
            'output_dir': output_dir,
            'record_sample_ids': True,
            'optimizer': {'name': 'adamw', 'lr': 1e-3},
        },
        'loggers': {'progress_bar': False, 'console': False},
        'callbacks': {'speed_monitor': None, 'lr_monitor': False},
    }


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def launch(
    recipe_path: Path,
    *,
    nproc: Optional[int],
    cwd: Path,
    overrides: tuple[str, ...] = (),
    env: Optional[dict] = None,
    timeout: float = 300,
    popen: bool = False,
):
    """Run ``composer -n N -m rlp.train`` (or ``python -m rlp.train`` when ``nproc`` is None) in ``cwd``.

    Per-rank stdout/stderr go to ``cwd/logs/`` so failures on rank 1 are visible (the launcher drops them).
    """
    full_env = {
        **os.environ,
        'TOKENIZERS_PARALLELISM': 'false',
        'OMP_NUM_THREADS': '1',
        'RLP_SYMLINK_UPLOAD_POLL_S': '0.5',
        'PYTHONPATH': str(REPO),
        **(env or {}),
    }
    if nproc is None:
        cmd = [sys.executable, '-m', 'rlp.train', str(recipe_path), *overrides]
    else:
        logs = cwd / 'logs'
        logs.mkdir(parents=True, exist_ok=True)
        composer = str(Path(sys.executable).parent / 'composer')
        cmd = [
            composer,
            '-n',
            str(nproc),
            '--stdout',
            str(logs / 'rank{rank}.out'),
            '--stderr',
            str(logs / 'rank{rank}.err'),
            '-m',
            'rlp.train',
            str(recipe_path),
            *overrides,
        ]
    if popen:
        return subprocess.Popen(
            cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def rank_logs(cwd: Path) -> str:
    """All per-rank log files of a launch, for assertion messages."""
    logs = cwd / 'logs'
    if not logs.exists():
        return ''
    return '\n'.join(f'--- {p.name}\n{p.read_text()[-3000:]}' for p in sorted(logs.iterdir()))


def local_run_recipe(folder: Path, max_duration: str) -> Path:
    """Tiny local data (48 packed samples of 32 tokens) in ``folder/data`` and a recipe for it at
    ``folder/recipe.yaml``, saving to ``folder/ckpt/{run_name}`` every 2 batches."""
    write_mds(str(folder / 'data' / 'train'), packed_samples(48, 32, seed=3))
    recipe = tiny_recipe(
        streams={'web': {'local': str(folder / 'data'), 'split': 'train'}},
        save_folder=str(folder / 'ckpt' / '{run_name}'),
        max_duration=max_duration,
    )
    return write_recipe(folder / 'recipe.yaml', recipe)
