"""Per-token log-probs from the final hidden states in chunks: full-vocabulary logits are never kept for backward.

Why: the policy forward scores N = P*G rollouts of up to T thought tokens; materialising their logits costs
N*(T+2)*V floats (paper scale: 16 * 2050 * 150k * 4 bytes ~ 20 GB per position, before log_softmax and its
gradient). Here the M trained tokens are gathered from the hidden states h (M, D) and scored ``chunk`` rows at a
time, each chunk under ``torch.utils.checkpoint`` (non-reentrant), so only h, the head weight and the (M,) result
are saved; the (chunk, V) logits exist transiently, in the forward and again in the backward recomputation.

    logp_i = log_softmax((W h_i + b) / temperature)[y_i],   i in one chunk of rows at a time

Peak extra memory ~ 3 * chunk * V * 4 bytes (fp32 logits, log_softmax, its gradient) instead of ~3 * N*(T+2)*V*4.
Values: the same ops as the unchunked path on the same rows, so equal up to GEMM blocking (fp32: |diff| <~ 1e-6,
tested at atol 1e-5; gradients likewise). Precision: the head and the log-softmax always run in fp32 (autocast off
inside, h and W upcast), so under bf16 autocast only the transformer body is rounded to bf16, not the scores.

How, without changing the model or its wrappers (DDP, FSDP1): :class:`HeadCapture` registers, for one forward,
a pre-hook on ``get_output_embeddings()`` that runs the chunked scoring on the head's input (the kept positions,
after the final norm) inside the head's call, then lets the head run on the LAST position only, so the model's own
output is (N, 1, V). Inside the call matters under FSDP1 ``use_orig_params``: there ``head.weight`` is the full
tensor; after the forward it is the rank's flat shard again. The head must sit in the ROOT FSDP unit (Composer's
default for HF models; its flat parameter stays unsharded until backward, so the checkpoint recomputation sees the
full weight); a head in its own unit is refused (:func:`linear_head`). The last-position logit doubles as a
compatibility check: it must equal ``W h + b``; models whose logits are not ``head(h)`` (logit scaling,
soft-capping, a non-Linear head) fail the check or are refused up front, and the caller falls back to the
unchunked path. The check runs until it passes once for a head; after that the head runs on no position at all
(the model returns (N, 0, V) logits): a decode step computes its logits once, not three times.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from rlp.hf import call_model, unwrap_hf

__all__ = ['HeadCapture', 'chunked_token_logprobs', 'fp32_linear', 'last_logits', 'linear_head', 'logprob_and_max']

# config attributes of HF models whose logits are NOT lm_head(h) (scaled or soft-capped); None/1 means unused
_LOGIT_TRANSFORMS = {
    'final_logit_softcapping': None,
    'logit_scale': 1.0,
    'logits_scaling': 1.0,
    'output_multiplier_scale': 1.0,
}


def linear_head(model: Any) -> Optional[torch.nn.Linear]:
    """The model's ``nn.Linear`` output head if its logits are plainly ``head(h)``, else None (caller falls back)."""
    hf = unwrap_hf(model)
    get = getattr(hf, 'get_output_embeddings', None)
    head = get() if callable(get) else None
    if not isinstance(head, torch.nn.Linear):
        return None
    units = [m for m in hf.modules() if type(m).__name__ == 'FullyShardedDataParallel']
    if any(any(x is head for x in unit.modules()) for unit in units[1:]):
        return None  # the head in a non-root FSDP unit is resharded after its forward: its weight is gone later
    cfg = getattr(hf, 'config', None)
    for name, neutral in _LOGIT_TRANSFORMS.items():
        value = getattr(cfg, name, neutral)
        if value is not None and value != neutral:
            return None
    return head


# heads whose model logits were checked to be head(h) (HeadCapture.matches passed once)
_CHECKED_HEADS: 'weakref.WeakKeyDictionary[torch.nn.Module, bool]' = weakref.WeakKeyDictionary()


class HeadCapture:
    """Context: in forwards inside it, ``fn(h)`` runs on the head's input h (N, L_kept, D) INSIDE the head's call
    (where FSDP has the full weight), its value is kept in ``self.result``, and the head itself then runs on the
    last position only (the model returns (N, 1, V) logits; ``truncate=False`` keeps all its positions) until the
    check (:meth:`matches`) has passed once for this head; from then on on no position (the model returns (N, 0, V)
    logits, which nobody reads)."""

    def __init__(self, head: torch.nn.Linear, fn: Callable[[torch.Tensor], Any], truncate: bool = True) -> None:
        self.head = head
        self.fn = fn
        self.truncate = truncate
        self.checked = _CHECKED_HEADS.get(head, False)
        self.result: Any = None
        self._last: Optional[torch.Tensor] = None
        self._handle: Any = None

    def _hook(self, module: torch.nn.Module, args: tuple) -> tuple:
        h = args[0]
        self.result = self.fn(h)
        if self.checked:
            return (h[:, :0],) + tuple(args[1:])
        with torch.no_grad():
            self._last = F.linear(h[:, -1], module.weight, module.bias)
        return ((h[:, -1:],) + tuple(args[1:])) if self.truncate else None

    def __enter__(self) -> 'HeadCapture':
        self._handle = self.head.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()

    def matches(self, model_logits: torch.Tensor) -> bool:
        """True if the model's logits (N, L, V) at the last position equal ``head(h_last)`` (a plain Linear head):
        max |diff| <= tol * (max |logit| + 1), tol = 1e-3 in fp32, 2e-2 for 16-bit logits (GEMM rounding). True
        without looking once the check has passed for this head."""
        if self.checked:
            return self.result is not None
        if self._last is None or model_logits.ndim != 3 or self._last.shape != model_logits[:, -1].shape:
            return False
        last = model_logits[:, -1]
        tol = 2e-2 if last.element_size() < 4 or self._last.element_size() < 4 else 1e-3
        ok = bool((self._last.float() - last.float()).abs().max() <= tol * (last.float().abs().max() + 1.0))
        if ok:
            _CHECKED_HEADS[self.head] = True
        return ok


def fp32_linear(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``W h + b`` in fp32 whatever the autocast state and the dtypes of h and W (the LM head of every score)."""
    with torch.autocast(device_type=h.device.type, enabled=False):
        return F.linear(h.float(), weight.float(), None if bias is None else bias.float())


def _chunk_logp(
    h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], target: torch.Tensor, temperature: float
) -> torch.Tensor:
    """(C, D) hidden, (V, D) weight, (C,) targets -> (C,) log softmax((W h + b) / temperature)[target], all in fp32."""
    logits = fp32_linear(h, weight, bias)
    return torch.log_softmax(logits / temperature, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)


def last_logits(model: Any, n: int, **kwargs: Any) -> tuple[Any, torch.Tensor]:
    """Run ``model(**kwargs)`` once (:func:`rlp.hf.call_model`; keeping at least the last ``n`` positions) and
    return ``(outputs, logits)`` with the fp32 logits (N, n, V) of the last ``n`` positions.

    With a plain Linear head (:func:`linear_head`) the logits are ``W h + b`` computed in fp32 from the final hidden
    states inside the head's call (:class:`HeadCapture`), so bf16 autocast does not round them; otherwise (or if the
    check fails) the model's own logits, upcast.
    """
    head = linear_head(model)
    if head is not None:
        fn = lambda h: fp32_linear(h[:, -n:].detach(), head.weight, head.bias)
        with HeadCapture(head, fn, truncate=False) as cap:
            out = call_model(model, **kwargs)
        if cap.result is not None and cap.result.shape[1] == n and cap.matches(out.logits):
            return out, cap.result
    else:
        out = call_model(model, **kwargs)
    return out, out.logits[:, -n:].float()


def chunked_token_logprobs(
    hidden: torch.Tensor, head: torch.nn.Linear, target: torch.Tensor, *, temperature: float = 1.0, chunk: int = 2048
) -> torch.Tensor:
    """(M, D) hidden states, (M,) target ids -> (M,) fp32 log-probs under softmax(head(h) / temperature).

    Rows are processed ``chunk`` at a time; with grad enabled each chunk is a non-reentrant checkpoint (its logits
    are recomputed in backward, never saved). ``chunk`` must be > 0.
    """
    if chunk <= 0:
        raise ValueError(f'logprob chunk must be > 0 rows, got {chunk}; set rlp.loss.logprob_chunk_tokens > 0')
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    grad = torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad)
    out = []
    for s in range(0, hidden.shape[0], chunk):
        args = (hidden[s : s + chunk], head.weight, head.bias, target[s : s + chunk], temperature)
        out.append(
            checkpoint(_chunk_logp, *args, use_reentrant=False, preserve_rng_state=False)
            if grad
            else _chunk_logp(*args)
        )
    return torch.cat(out)


@torch.no_grad()
def logprob_and_max(
    rows: torch.Tensor, head: Optional[torch.nn.Linear], target: torch.Tensor, chunk: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """(M,) log p(target) and (M,) max_v log p(v) from ONE fp32 log-softmax per row (no grad), ``chunk`` rows at a
    time: ``rows`` are hidden states (M, D) scored by ``head`` (fp32 ``W h + b``) or, with ``head=None``, logits
    (M, V). Both values come from the same row, so ``logp == max`` exactly when the target is an argmax."""
    lp, mx = [], []
    for s in range(0, rows.shape[0], max(chunk, 1)):
        part = rows[s : s + chunk]
        logits = fp32_linear(part, head.weight, head.bias) if head is not None else part.float()
        logp = torch.log_softmax(logits, -1)
        lp.append(logp.gather(-1, target[s : s + chunk].unsqueeze(-1)).squeeze(-1))
        mx.append(logp.amax(-1))
    if not lp:
        return rows.new_zeros(0, dtype=torch.float32), rows.new_zeros(0, dtype=torch.float32)
    return torch.cat(lp), torch.cat(mx)
