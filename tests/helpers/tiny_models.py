"""Tiny random-init HF causal LMs of several architectures, built locally (no hub access) for tests."""

from __future__ import annotations

import torch

__all__ = ['TINY_KINDS', 'build_tiny_model', 'tiny_config', 'tiny_nemotron_h_config']

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
    if kind == 'nemotron_h':
        return tiny_nemotron_h_config(vocab_size)
    raise ValueError(f'unknown tiny model kind {kind!r}; expected one of {TINY_KINDS}')


def tiny_nemotron_h_config(vocab_size: int, pattern: str = 'M*M-', **overrides):
    """A Nemotron-H (hybrid Mamba2 + attention) config with hidden size 64 and the layer pattern ``pattern``
    (M Mamba2, * attention, - MLP). Without mamba_ssm / causal_conv1d transformers runs its PyTorch Mamba2 path."""
    from transformers import NemotronHConfig

    settings = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        hybrid_override_pattern=pattern,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        mamba_num_heads=4,
        mamba_head_dim=16,
        n_groups=2,
        ssm_state_size=16,
        conv_kernel=4,
        expand=1,
        chunk_size=8,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    settings.update(overrides)
    return NemotronHConfig(**settings)


def build_tiny_model(kind: str, vocab_size: int, seed: int = 0):
    """A random-init ``AutoModelForCausalLM`` of ``kind`` (see :func:`tiny_config`), seeded, in train mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, vocab_size), attn_implementation='eager')
    model.train()
    return model
