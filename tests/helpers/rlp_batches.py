"""Batches, tiny models and Trainers for the RLP tests (bundled tokenizer, synthetic documents, tiny Llama)."""

from __future__ import annotations

import torch

from pipeline.synthetic import generate_documents
from rlp.config import RLPConfig
from tests.helpers.tiny_models import build_tiny_model

VOCAB = 512
CLOSE_ID = 2  # '</think>' in the bundled tokenizer (checked in rlp_config)


def close_biased(model, close_id: int, bias: float):
    """Give the LM head a bias on the closing tag so random-init models close their thoughts (tied weight kept)."""
    old = model.get_output_embeddings()
    new = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    new.weight = old.weight
    with torch.no_grad():
        new.bias.zero_()
        new.bias[close_id] = bias
    model.set_output_embeddings(new)
    return model


def packed_batch(tokenizer, rows: int, length: int, seed: int = 0):
    """A packed batch of synthetic documents following the batch contract (ids, segment_ids, sample ids)."""
    ids, seg, d = [], [], 0
    for doc in generate_documents(rows * 6, seed=seed):
        toks = tokenizer(doc, add_special_tokens=False)['input_ids'] + [tokenizer.eos_token_id]
        ids += toks
        seg += [d] * len(toks)
        d += 1
        if len(ids) >= rows * length:
            break
    x = torch.tensor(ids[: rows * length]).view(rows, length)
    s = torch.tensor(seg[: rows * length]).view(rows, length)
    s = s - s[:, :1]  # segment ids restart at 0 in every row
    return {
        'input_ids': x,
        'labels': x.clone(),
        'attention_mask': torch.ones_like(x),
        'segment_ids': s,
        'sample_id': torch.arange(100, 100 + rows),
    }


class Rows(torch.utils.data.Dataset):
    def __init__(self, batch):
        self.batch = batch

    def __len__(self):
        return self.batch['input_ids'].shape[0]

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.batch.items()}


def rlp_config(tokenizer, tmp_path=None, **loss):
    assert tokenizer.convert_tokens_to_ids('</think>') == CLOSE_ID
    return RLPConfig.from_dict(
        {
            'positions': {'min_context': 8, 'max_per_sample': 2},
            'rollouts': {'group_size': 3, 'max_thought_tokens': 5, 'temperature': 1.0},
            'teacher': {'tau': 0.5},
            'loss': dict(loss),
            'log': {
                'every_n_batches': 1,
                'max_rows': 4,
                'path': None if tmp_path is None else str(tmp_path / 'thoughts.jsonl'),
            },
        }
    )


def skipping_batch(tokenizer, rows=8, skip_rows=(2, 5), seed=0):
    batch = packed_batch(tokenizer, rows, 48, seed=seed)
    for r in skip_rows:  # rows with no eligible position: all EOS
        batch['input_ids'][r] = tokenizer.eos_token_id
        batch['labels'][r] = tokenizer.eos_token_id
    return batch


def rlp_trainer(
    tokenizer, data, config, *, microbatch=8, duration='1ba', optimizer='sgd', lr=0.5, model_seed=0, **kwargs
):
    # Composer is imported here, not at the top: the batch helpers above also serve tests that run without it (the
    # CUDA tests of tests/rlp/test_precision_gpu.py, on a GPU machine whose torch Composer does not support)
    from composer import Trainer
    from composer.loggers import InMemoryLogger
    from composer.models import HuggingFaceModel

    from rlp.run.algorithm import RLP

    hf = close_biased(build_tiny_model('llama', VOCAB, seed=model_seed), CLOSE_ID, 2.0)
    model = HuggingFaceModel(hf, tokenizer=tokenizer, use_logits=True)
    opt = (
        torch.optim.SGD(model.parameters(), lr=lr)
        if optimizer == 'sgd'
        else torch.optim.Adam(model.parameters(), lr=lr)
    )
    logger = InMemoryLogger()
    loader = torch.utils.data.DataLoader(Rows(data), batch_size=8, shuffle=False)
    algo = RLP(config, seed=11)
    trainer = Trainer(
        model=model,
        train_dataloader=loader,
        max_duration=duration,
        optimizers=opt,
        algorithms=[algo],
        loggers=[logger],
        device='cpu',
        device_train_microbatch_size=microbatch,
        progress_bar=False,
        log_to_console=False,
        seed=3,
        **kwargs,
    )
    return trainer, algo, logger, hf


def series(logger, key):
    return [float(v) for _, v in logger.data[key]]
