"""A tiny Llama written as a GGUF file by the ``gguf`` package, the way llama.cpp's converter lays it out, with a
byte-level BPE tokenizer trained here; the float32 Hugging Face model it was written from is the reference."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch

__all__ = ['SPECIALS', 'tiny_bpe_tokenizer', 'write_tiny_llama_gguf', 'write_wheel']

SPECIALS = ('<|endoftext|>', '<|im_start|>', '<|im_end|>')  # ids 0, 1, 2 as in SmolLM2
_TEXT = [
    'Tom has 12 apples and buys 7 more. How many apples does he have? 12 + 7 = 19. So the answer is 19.',
    'The capital of France is Paris. The river Seine runs through the city.\n',
    'Anna reads 3 books a week; in 4 weeks she reads 3 * 4 = 12 books.',
    'Then we think about it again: so the total is the sum of the parts.',
]


def tiny_bpe_tokenizer(vocab_size: int = 320):
    """A byte-level BPE (GPT-2 pre-tokenisation) trained on a few sentences, with SmolLM2's three special tokens
    first; returned as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TEXT * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIALS[1], eos_token=SPECIALS[2], unk_token=SPECIALS[0]
    )


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's row order for q/k projections (rotary halves interleaved per head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama_gguf(path: Path, tokenizer, seed: int = 0):
    """Write a random-init tiny Llama (2 layers, hidden 32, GQA 4/2 heads, tied embeddings) and ``tokenizer`` as
    a float32 GGUF at ``path``; returns the Hugging Face model (float32, eval mode) the file was written from."""
    import gguf
    from transformers import AutoModelForCausalLM

    from tests.helpers.tiny_models import tiny_config

    cfg = tiny_config('llama', len(tokenizer))
    cfg.rope_theta = 10000.0
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # RMSNorm weights start at one: make them differ so a mix-up would show
        for name, p in model.named_parameters():
            if 'norm' in name:
                p.uniform_(0.5, 1.5)
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = cfg.hidden_size // n_head

    w = gguf.GGUFWriter(str(path), 'llama')
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(len(tokenizer))
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    w.add_tokenizer_model('gpt2')
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t, _ in vocab])
    merges = tokenizer.backend_tokenizer.to_str()
    w.add_token_merges([' '.join(m) if isinstance(m, list) else m for m in json.loads(merges)['model']['merges']])
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_unk_token_id(tokenizer.unk_token_id)
    w.add_pad_token_id(tokenizer.eos_token_id)
    w.add_add_bos_token(False)

    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    tensors = {'token_embd.weight': sd['model.embed_tokens.weight'], 'output_norm.weight': sd['model.norm.weight']}
    for i in range(cfg.num_hidden_layers):
        p = f'model.layers.{i}.'
        tensors.update({
            f'blk.{i}.attn_norm.weight': sd[p + 'input_layernorm.weight'],
            f'blk.{i}.attn_q.weight': _permute(sd[p + 'self_attn.q_proj.weight'], n_head),
            f'blk.{i}.attn_k.weight': _permute(sd[p + 'self_attn.k_proj.weight'], n_kv),
            f'blk.{i}.attn_v.weight': sd[p + 'self_attn.v_proj.weight'],
            f'blk.{i}.attn_output.weight': sd[p + 'self_attn.o_proj.weight'],
            f'blk.{i}.ffn_norm.weight': sd[p + 'post_attention_layernorm.weight'],
            f'blk.{i}.ffn_gate.weight': sd[p + 'mlp.gate_proj.weight'],
            f'blk.{i}.ffn_up.weight': sd[p + 'mlp.up_proj.weight'],
            f'blk.{i}.ffn_down.weight': sd[p + 'mlp.down_proj.weight'],
        })  # fmt: skip
    for name, t in tensors.items():
        w.add_tensor(name, np.ascontiguousarray(t.numpy(), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


def write_wheel(folder: Path, name: str, version: str, members: dict[str, Path]) -> Path:
    """A minimal wheel ``{name}-{version}-py3-none-any.whl`` in ``folder`` holding ``members`` (path in the wheel
    -> file here) and the metadata pip reads."""
    dist = name.replace('-', '_')
    wheel = folder / f'{dist}-{version}-py3-none-any.whl'
    info = f'{dist}-{version}.dist-info'
    with zipfile.ZipFile(wheel, 'w') as zf:
        for arcname, src in members.items():
            zf.write(src, arcname)
        zf.writestr(f'{info}/METADATA', f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n')
        zf.writestr(f'{info}/WHEEL', 'Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n')
        zf.writestr(f'{info}/RECORD', '')
    return wheel
