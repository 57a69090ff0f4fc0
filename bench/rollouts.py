"""Thought tokens per second of the RLP sampler against Hugging Face ``generate``, measured in the same run.

    python bench/rollouts.py [--threads 2] [--repeats 3] [--quick]

Model: a random-init Llama (hidden 512, 6 layers, 8 heads, 32k vocabulary; ~23M parameters with tied embeddings).
Settings: G 16 thoughts of 128 tokens after a 512-token prefix, one position, and the same with 4 positions.
Three decoders: the sampler (``rlp.rollouts.sample_thoughts``; for this Llama, each prompt's KV cache held once,
``rlp.cascade``), the same sampler with an ordinary KV cache expanded G times (``shared_prefix=False``: the plain
shared-prefix-prefill loop), and ``generate(num_return_sequences=G, do_sample=True)``, all forced to the same number
of tokens (the head's bias puts the closing tag's logit at -1e4: no decoder can draw it). A last setting lets half
the rollouts close early (their keyed uniform draws the closing tag at token 16), where the sampler drops finished
rows. Each figure is the best of ``--repeats``, the decoders taking turns; ratios come from this run only.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlp.rollouts import Prompts, sample_thoughts

VOCAB = 32000
CLOSE_ID = VOCAB - 1  # the last id: a uniform just below 1 picks it in the inverse-CDF sampler


def _model(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024,
                      tie_word_embeddings=True, attn_implementation='sdpa')  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    model.lm_head.bias = torch.nn.Parameter(torch.zeros(vocab))  # a plain Linear head, as the sampler scores it
    return model


def _race(fns, repeats: int) -> list[float]:
    """Best time of each function over ``repeats`` rounds, the functions taking turns within each round (so a
    machine that speeds up or slows down over minutes moves them alike)."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [min(t) for t in times]


def _sampler(model, positions: int, g: int, prefix: int, tokens: int, close_half_at: int = 0, shared=None):
    ids = torch.randint(10, model.config.vocab_size, (positions, prefix), generator=torch.Generator().manual_seed(1))
    prompts = Prompts(ids=ids, mask=torch.ones_like(ids), target=torch.zeros(positions, dtype=torch.long))
    u = torch.rand(positions, g, tokens, generator=torch.Generator().manual_seed(2)) * 0.999
    if close_half_at:  # odd rollouts draw the last id (the closing tag) at that step
        u[:, 1::2, close_half_at - 1] = 1.0 - 1e-7
    return lambda: sample_thoughts(model, prompts, u, temperature=0.7, top_p=1.0, close_ids=[CLOSE_ID], pad_id=0,
                                   shared_prefix=shared)  # fmt: skip


def _generate(model, positions: int, g: int, prefix: int, tokens: int):
    ids = torch.randint(10, model.config.vocab_size, (positions, prefix), generator=torch.Generator().manual_seed(1))

    def go():
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.7,
                           top_k=0, num_return_sequences=g, max_new_tokens=tokens, min_new_tokens=tokens,
                           pad_token_id=0, eos_token_id=None)  # fmt: skip

    return go


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--quick', action='store_true', help='prefix 128, 32 thought tokens (a fast smoke check)')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prefix, tokens, g = (128, 32, 16) if args.quick else (512, 128, 16)
    model = _model(VOCAB)
    print(f'{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}; '
          f'G {g}, prefix {prefix}, {tokens} thought tokens, best of {args.repeats}')  # fmt: skip
    close_bias = model.lm_head.bias.data[CLOSE_ID:]
    close_bias.fill_(-1e4)  # no decoder can draw the closing tag: every rollout runs to the budget
    for positions in (1, 4):
        ours, plain, theirs = _race(
            [
                _sampler(model, positions, g, prefix, tokens),
                _sampler(model, positions, g, prefix, tokens, shared=False),
                _generate(model, positions, g, prefix, tokens),
            ],
            args.repeats,
        )
        n = positions * g * tokens
        print(f'{positions} position(s): sampler {n / ours:6.0f} tok/s   expanded-cache loop {n / plain:6.0f} tok/s   '
              f'generate {n / theirs:6.0f} tok/s   generate/sampler {theirs / ours:.2f}x   '
              f'expanded/sampler {plain / ours:.2f}x', flush=True)  # fmt: skip
    close_bias.fill_(0.0)  # the closing tag drawable: the keyed uniforms decide who closes (u < 0.999 never draws it)
    full, early = _race(
        [_sampler(model, 1, g, prefix, tokens), _sampler(model, 1, g, prefix, tokens, close_half_at=16)], args.repeats
    )
    print(
        f'half the rollouts closing after 16 tokens: {early / full:.2f} of the time of none closing '
        f'(proportional to live rows: {(0.5 + 0.5 * 16 / tokens):.2f})'
    )
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
