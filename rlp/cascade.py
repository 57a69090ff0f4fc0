"""Shared-prefix ("cascade") attention for decoding G thoughts per prompt without copying the prompt's KV cache.

Decoding G rollouts after one prompt with an ordinary KV cache repeats the prompt's keys and values G times, and
every decode step reads all G copies (and a growing cache is re-concatenated each step): on CPU that memory traffic,
not the arithmetic, sets the speed. Here the prompt's cache is held once per prompt and each live row keeps only its
own thought's keys and values, in a buffer that grows by doubling (not re-concatenated every step). For a query q
of live row r (rollout n = rows[r] of prompt p = n // G), per head:

    s_pre = q K_pre[p]^T * scale,  masked where the prompt is padding     (Lp scores; K_pre[p]: (Lp, d))
    s_own = q K_own[r]^T * scale                                          (t scores; the thought so far)
    a     = softmax([s_pre, s_own])                                       (one softmax over both parts)
    out   = a_pre V_pre[p] + a_own V_own[r]

which is exactly attention over the concatenated sequence ``prompt + thought``. The prompt part is one batched matmul
per prompt with all G (times the GQA group) queries as rows, so ``K_pre`` and ``V_pre`` are read once per prompt
instead of once per rollout.

It plugs into Hugging Face models through their attention interface: :class:`SharedPrefixCache` is passed as
``past_key_values`` (its ``update`` stores a decode step's keys/values and returns the thought part), and
:func:`shared_prefix_attention` (registered under :data:`ATTENTION_NAME`) reads the prompt part from the cache that
:func:`decoding_with` makes active. :func:`supports_shared_prefix` says which models take this path; the sampler
falls back to an expanded ordinary cache for the others.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, Optional

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin, LinearAttentionCacheLayerMixin

from rlp.hf import unwrap_hf

__all__ = [
    'ATTENTION_NAME',
    'SharedPrefixCache',
    'SharedPrefixLayer',
    'decoding_with',
    'repeat_rows',
    'select_rows',
    'shared_prefix_attention',
    'supports_shared_prefix',
]

ATTENTION_NAME = 'rlp_shared_prefix'

# Model types whose attention layers call ``past_key_value.update(k, v, layer_idx)`` and then the registered
# attention function with (query, key, value) and nothing else model-specific (no soft-capping, sinks or sliding
# windows): decoding through this path was checked against a full forward for each (tests/rlp/test_rollouts.py).
# nemotron_h is hybrid: its attention layers take this path, its Mamba2 layers keep a state per rollout.
_MODEL_TYPES = ('llama', 'qwen2', 'qwen3', 'nemotron_h')

_ACTIVE: contextvars.ContextVar[Optional['SharedPrefixCache']] = contextvars.ContextVar('rlp_shared_prefix_cache')


def supports_shared_prefix(model: Any) -> bool:
    """True when ``model`` (HF, or wrapped: see :mod:`rlp.hf`) can decode with :class:`SharedPrefixCache`: a
    Llama / Qwen2 / Qwen3 / Nemotron-H causal LM with eager or SDPA attention and no sliding window in use."""
    config = getattr(unwrap_hf(model), 'config', None)
    if config is None or getattr(config, 'model_type', None) not in _MODEL_TYPES:
        return False
    if getattr(config, '_attn_implementation', None) not in ('eager', 'sdpa'):
        return False
    return not getattr(config, 'use_sliding_window', False)


class SharedPrefixLayer(CacheLayerMixin):
    """One attention layer of :class:`SharedPrefixCache`: the prompts' keys/values and each live row's thought.

    Attributes:
        prefix_k, prefix_v: (P, Hkv, Lp, d), the prompts' keys/values from the prefill.
        own_k, own_v: (N_live, Hkv, capacity, d), the thought tokens' keys/values (``length`` filled; the capacity
            doubles when full, up to ``max_tokens``).
        length: thought tokens stored so far.
    """

    is_sliding = False
    supports_early_init = False

    def __init__(self, prefix_k: torch.Tensor, prefix_v: torch.Tensor, rows: int, max_tokens: int):
        super().__init__()
        self.prefix_k, self.prefix_v = prefix_k, prefix_v
        self.keys = self.values = None  # this layer's keys/values are the two parts above, never one tensor
        self.max_tokens = max_tokens
        first = min(max_tokens, 64)  # grown by doubling: thoughts that close early never pay for the budget
        self.own_k = prefix_k.new_empty(rows, prefix_k.shape[1], first, prefix_k.shape[3])
        self.own_v = prefix_v.new_empty(rows, prefix_v.shape[1], first, prefix_v.shape[3])
        self.length = 0
        self.dtype, self.device = prefix_k.dtype, prefix_k.device
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the layer is built from the prefill."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (N_live, Hkv, q, d) keys/values of the new tokens; return the thought part so far."""
        t, q = self.length, key_states.shape[2]
        if t + q > self.max_tokens:
            raise ValueError(f'SharedPrefixCache holds {self.max_tokens} thought tokens; got {t + q}')
        if t + q > self.own_k.shape[2]:
            size = min(self.max_tokens, max(2 * self.own_k.shape[2], t + q))
            self.own_k, self.own_v = _grown(self.own_k, t, size), _grown(self.own_v, t, size)
        self.own_k[:, :, t : t + q] = key_states
        self.own_v[:, :, t : t + q] = value_states
        self.length = t + q
        return self.own_k[:, :, : t + q], self.own_v[:, :, : t + q]

    def get_seq_length(self) -> int:
        return self.prefix_k.shape[2] + self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.own_k, self.own_v = self.own_k[indices], self.own_v[indices]


class SharedPrefixCache(Cache):
    """The KV cache of G rollouts per prompt: each prompt's keys/values once, each live row's thought apart.

    One :class:`SharedPrefixLayer` per attention layer (``layers``; a hybrid model's recurrent layers keep their own
    per-row state there); the views below list the attention layers' parts.

    Attributes:
        prefix_k, prefix_v: per layer (P, Hkv, Lp, d), the prompts' keys/values from the prefill.
        prefix_mask: (P, Lp) bool, True on real (not padding) prompt tokens.
        own_k, own_v: per layer (N_live, Hkv, capacity, d), the thought tokens' keys/values (``lengths[l]`` filled;
            the capacity doubles when full, up to ``max_tokens``).
        rows: (N_live,) the rollout index (p * G + g) of each live row; its prompt is ``rows // G``.
        group_size: G.
    """

    def __init__(self, prefill: Any, prefix_mask: torch.Tensor, group_size: int, max_tokens: int):
        """``prefill``: the prefill's cache (a transformers ``Cache``) or its per-layer (keys, values) pairs.

        A hybrid model's recurrent layers (Mamba2 and the like: no keys/values to share, a state per sequence) keep
        their prefill cache layer, its state repeated for the G rollouts of each prompt (:func:`repeat_rows`)."""
        self.prefix_mask = prefix_mask.bool()
        self.group_size = group_size
        self.max_tokens = max(max_tokens, 1)
        p = prefix_mask.shape[0]
        n = p * group_size
        if isinstance(prefill, Cache):
            layers: list[Any] = []
            for layer in prefill.layers:
                if isinstance(layer, CacheLayerMixin):  # attention: keys/values shared by the G rollouts
                    layers.append(SharedPrefixLayer(layer.keys, layer.values, n, self.max_tokens))
                else:  # a recurrent state per sequence (or nothing: an MLP/MoE layer's placeholder)
                    repeat_rows(layer, group_size, p)
                    layers.append(layer)
        else:
            layers = [SharedPrefixLayer(k, v, n, self.max_tokens) for k, v in prefill]
        super().__init__(layers=layers)
        self.rows = torch.arange(n, device=prefix_mask.device)

    @property
    def attention_layers(self) -> list[SharedPrefixLayer]:
        return [layer for layer in self.layers if isinstance(layer, SharedPrefixLayer)]

    @property
    def prefix_k(self) -> list[torch.Tensor]:
        return [layer.prefix_k for layer in self.attention_layers]

    @property
    def prefix_v(self) -> list[torch.Tensor]:
        return [layer.prefix_v for layer in self.attention_layers]

    @property
    def own_k(self) -> list[torch.Tensor]:
        return [layer.own_k for layer in self.attention_layers]

    @property
    def own_v(self) -> list[torch.Tensor]:
        return [layer.own_v for layer in self.attention_layers]

    @property
    def lengths(self) -> list[int]:
        return [layer.length for layer in self.attention_layers]

    def select(self, idx: torch.Tensor) -> None:
        """Keep only the live rows ``idx`` (indices into the current rows)."""
        self.rows = self.rows[idx]
        for layer in self.layers:
            select_rows(layer, idx)


def repeat_rows(layer: Any, repeats: int, batch: int) -> None:
    """Repeat each batch row of one cache layer ``repeats`` times in place (row b -> rows b*repeats .. +repeats-1).

    Attention layers have ``batch_repeat_interleave``; recurrent layers (conv and SSM states) only ``reorder_cache``,
    which selects along the batch: ``arange(batch).repeat_interleave(repeats)`` repeats each row's state."""
    if isinstance(layer, LinearAttentionCacheLayerMixin):  # reorder_cache covers its states (and any keys/values)
        layer.reorder_cache(torch.arange(batch, device=layer.device).repeat_interleave(repeats))
    else:
        layer.batch_repeat_interleave(repeats)


def select_rows(layer: Any, idx: torch.Tensor) -> None:
    """Keep the batch rows ``idx`` of one cache layer in place (attention or recurrent, see :func:`repeat_rows`)."""
    if isinstance(layer, LinearAttentionCacheLayerMixin):
        layer.reorder_cache(idx)
    else:
        layer.batch_select_indices(idx)


def _grown(buffer: torch.Tensor, filled: int, size: int) -> torch.Tensor:
    """A (N, Hkv, size, d) buffer holding the first ``filled`` thought tokens of ``buffer``."""
    out = buffer.new_empty(*buffer.shape[:2], size, buffer.shape[3])
    out[:, :, :filled] = buffer[:, :, :filled]
    return out


def _to_prompt_major(x: torch.Tensor, cache: SharedPrefixCache, hkv: int) -> torch.Tensor:
    """(N_live, H, q, c) per-row values -> (P, Hkv, rep * G * q, c), zeros for closed rollouts."""
    p, g = cache.prefix_mask.shape[0], cache.group_size
    n, h, q, c = x.shape
    full = x.new_zeros(p * g, h, q, c)
    full[cache.rows] = x
    return full.view(p, g, hkv, h // hkv, q, c).permute(0, 2, 3, 1, 4, 5).reshape(p, hkv, -1, c)


def _to_row_major(x: torch.Tensor, cache: SharedPrefixCache, h: int, q: int) -> torch.Tensor:
    """Inverse of :func:`_to_prompt_major`: (P, Hkv, rep * G * q, c) -> (N_live, H, q, c)."""
    p, g = cache.prefix_mask.shape[0], cache.group_size
    hkv, c = x.shape[1], x.shape[-1]
    full = x.view(p, hkv, h // hkv, g, q, c).permute(0, 3, 1, 2, 4, 5).reshape(p * g, h, q, c)
    return full[cache.rows]


def shared_prefix_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of the live rows' new tokens over their prompt (shared) and their own thought (see the module
    docstring). query: (N_live, H, q, d); key/value: (N_live, Hkv, t, d), the thought part returned by
    :meth:`SharedPrefixCache.update` (the new tokens last). Returns (N_live, q, H, d) and no weights."""
    cache = _ACTIVE.get(None)
    if cache is None:
        raise RuntimeError(f'attention {ATTENTION_NAME!r} runs only inside rlp.cascade.decoding_with(cache)')
    if dropout:
        raise ValueError('shared-prefix attention is for sampling in eval mode; dropout must be 0')
    layer = cache.layers[module.layer_idx]
    pk, pv = layer.prefix_k, layer.prefix_v  # (P, Hkv, Lp, d)
    n, h, q, d = query.shape
    hkv, t = key.shape[1], key.shape[2]
    scale = d**-0.5 if scaling is None else scaling

    s_pre = _to_prompt_major(query, cache, hkv) @ pk.transpose(-1, -2)  # (P, Hkv, rep*G*q, Lp)
    s_pre = _to_row_major(s_pre, cache, h, q) * scale  # (N, H, q, Lp)
    s_pre = s_pre.masked_fill(~cache.prefix_mask[cache.rows // cache.group_size][:, None, None, :], float('-inf'))
    q_own = query.reshape(n, hkv, (h // hkv) * q, d)
    s_own = (q_own @ key.transpose(-1, -2)).view(n, h, q, t) * scale  # (N, H, q, t)
    if q > 1:  # several new tokens: each sees the thought up to itself
        future = torch.ones(q, t, dtype=torch.bool, device=query.device).triu(t - q + 1)
        s_own = s_own.masked_fill(future, float('-inf'))
    a = torch.softmax(torch.cat([s_pre, s_own], dim=-1).float(), dim=-1).to(query.dtype)  # as HF's eager does
    lp = pk.shape[2]
    # a · V as one matmul over the whole sequence computes it under autocast: inputs rounded to the autocast dtype,
    # products summed in fp32, the sum rounded once. The two parts are done the same way (two rounded halves added
    # moved bf16 log-probs by ~5e-4 against the training forward).
    device = query.device.type
    low = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    rnd = (lambda x: x.to(low).float()) if low is not None else (lambda x: x.float())
    with torch.autocast(device, enabled=False):
        out = _to_row_major(rnd(_to_prompt_major(a[..., :lp], cache, hkv)) @ rnd(pv), cache, h, q)  # (N, H, q, d)
        own = rnd(a[..., lp:].reshape(n, hkv, (h // hkv) * q, t)) @ rnd(value)
        out = (out + own.view(n, h, q, d)).to(low or query.dtype)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, shared_prefix_attention)


@contextlib.contextmanager
def decoding_with(model: Any, cache: SharedPrefixCache) -> Iterator[None]:
    """Within the block, ``model``'s attention layers use :func:`shared_prefix_attention` with ``cache``; the
    model's attention implementation is restored afterwards."""
    config = unwrap_hf(model).config
    before = getattr(config, '_attn_implementation_internal', None)
    token = _ACTIVE.set(cache)
    config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation_internal = before
        _ACTIVE.reset(token)
