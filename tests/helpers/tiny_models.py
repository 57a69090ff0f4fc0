"""Tiny random-init HF causal LMs of several architectures, built locally (no hub access) for tests."""

from __future__ import annotations

import torch

__all__ = ['TINY_KINDS', 'build_tiny_model', 'tiny_config']

TINY_KINDS = ('llama', 'qwen3', 'gpt2')


def tiny_config(kind: str, vocab_size: int):
    """A transformers config of ``kind`` with 2 layers and hidden size 32 (fast on CPU)."""
    from transformers import GPT2Config, LlamaConfig, Qwen3Config

    if kind == 'llama':
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
        )
    if kind == 'qwen3':
        return Qwen3Config(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=512,
            tie_word_embeddings=True,
        )
    if kind == 'gpt2':
        return GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=512)
    raise ValueError(f'unknown tiny model kind {kind!r}; expected one of {TINY_KINDS}')


def build_tiny_model(kind: str, vocab_size: int, seed: int = 0):
    """A random-init ``AutoModelForCausalLM`` of ``kind`` (see :func:`tiny_config`), seeded, in train mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, vocab_size), attn_implementation='eager')
    model.train()
    return model
