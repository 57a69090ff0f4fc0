"""The no-think teacher: our own frozen copies of the model (not ``composer.algorithms.EMA``, which swaps weights).

Kinds (``rlp.teacher.kind``):
  - ``ema``: phi <- tau * phi + (1 - tau) * theta after every optimizer step (the paper, tau = 0.999);
  - ``frozen``: the weights at the first batch, never updated;
  - ``none``: the current model without a thought (no copy needed for the reward).

The EMA copy is kept for every kind, so the information gain against it is always logged: a policy can raise its
gain over the *current* model by degrading its own no-think prediction, and only the EMA-based reward shows that
collapse (``science-cpu.md`` measured it).

Note on what the teacher changes: S_EMA is the same for the G thoughts of a position, so it cancels exactly in the
group-relative advantage A = G/(G-1)(r - mean r) (NVlabs/RLP#3): with the default options the teacher has NO effect
on the gradient. It changes the logged reward (its value and sign) and anything that depends on the reward's level
rather than its within-group differences (e.g. reward clipping or filtering, none of which is implemented here;
``std_normalize`` also only sees within-group differences).

Both copies are initialised lazily from the model at the first batch (``ensure``), unless a checkpoint supplied
their weights. They are ``copy.deepcopy`` of the unwrapped HF module, in eval mode with ``requires_grad=False``,
on the model's device. Limitation: under FSDP a teacher would have to be a full (unsharded) copy per rank, gathered
with ``summon_full_params`` at every update; this is not implemented, and a sharded model is refused with a clear
error (single device and DDP work).
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch

__all__ = ['FrozenCopy', 'Teachers', 'ema_update']


def ema_update(teacher: torch.nn.Module, model: torch.nn.Module, tau: float) -> None:
    """In place: phi <- tau * phi + (1 - tau) * theta for float parameters and buffers; other buffers are copied.

    .. math:: \\phi \\leftarrow \\tau\\,\\phi + (1 - \\tau)\\,\\theta
    """
    with torch.no_grad():
        src = dict(model.named_parameters())
        for name, phi in teacher.named_parameters():
            phi.lerp_(src[name].detach().to(phi.dtype), 1.0 - tau)
        src_buf = dict(model.named_buffers())
        for name, buf in teacher.named_buffers():
            if name not in src_buf:
                continue
            if buf.is_floating_point():
                buf.lerp_(src_buf[name].to(buf.dtype), 1.0 - tau)
            else:
                buf.copy_(src_buf[name])


def _is_sharded(module: torch.nn.Module) -> bool:
    return any(type(m).__name__ in ('FullyShardedDataParallel', 'FSDPModule') or hasattr(m, '_fsdp_wrapped_module')
               for m in module.modules())


class FrozenCopy:
    """A lazily created, frozen copy of a model; its weights round-trip through ``state_dict`` as plain tensors."""

    def __init__(self) -> None:
        self.module: Optional[torch.nn.Module] = None
        self._pending: Optional[dict[str, torch.Tensor]] = None

    def ensure(self, model: torch.nn.Module) -> torch.nn.Module:
        """Create the copy from ``model`` if needed (then load any weights restored from a checkpoint)."""
        if self.module is None:
            if _is_sharded(model):
                raise NotImplementedError('RLP teacher: the model is FSDP-sharded; the teacher needs a full copy per '
                                          'rank, which is not implemented yet; train on one device or with DDP')
            self.module = copy.deepcopy(model)
            self.module.eval()
            for p in self.module.parameters():
                p.requires_grad_(False)
            if self._pending is not None:
                self.module.load_state_dict(self._pending)
                self._pending = None
        return self.module

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The copy's weights as CPU tensors (empty before the first batch, or the pending restored weights)."""
        if self.module is None:
            return dict(self._pending or {})
        return {k: v.detach().to('cpu', copy=True) for k, v in self.module.state_dict().items()}

    def load_state_dict(self, weights: dict[str, torch.Tensor]) -> None:
        """Restore weights now (copy exists) or at creation (``ensure``); an empty dict means "not created yet"."""
        if not weights:
            return
        if self.module is None:
            self._pending = dict(weights)
        else:
            self.module.load_state_dict(weights)


class Teachers:
    """The EMA copy (always) and, for ``kind='frozen'``, the frozen initial copy.

    Args:
        kind: ``ema`` | ``frozen`` | ``none`` (see the module docstring).
        tau: EMA decay in [0, 1].
    """

    def __init__(self, kind: str, tau: float) -> None:
        if kind not in ('ema', 'frozen', 'none'):
            raise ValueError(f'teacher kind {kind!r} unknown; use ema, frozen or none')
        self.kind = kind
        self.tau = tau
        self.ema = FrozenCopy()
        self.frozen = FrozenCopy() if kind == 'frozen' else None
        self.updates = 0

    def ensure(self, model: torch.nn.Module) -> None:
        """Lazy initialisation phi <- theta at the first batch (no-op once created or restored)."""
        self.ema.ensure(model)
        if self.frozen is not None:
            self.frozen.ensure(model)

    def update(self, model: torch.nn.Module) -> None:
        """One EMA step after an optimizer step (the frozen copy never changes)."""
        ema_update(self.ema.ensure(model), model, self.tau)
        self.updates += 1

    def baseline_module(self) -> Optional[torch.nn.Module]:
        """The module whose no-think log-prob is the reward's baseline; None = the current model (kind none)."""
        if self.kind == 'ema':
            return self.ema.module
        if self.kind == 'frozen':
            return self.frozen.module  # type: ignore[union-attr]
        return None

    def state_dict(self) -> dict[str, Any]:
        """Tensors and ints only (safe for a weights-only ``torch.load``)."""
        out: dict[str, Any] = {'ema': self.ema.state_dict(), 'updates': self.updates}
        if self.frozen is not None:
            out['frozen'] = self.frozen.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` produced."""
        self.ema.load_state_dict(state.get('ema', {}))
        if self.frozen is not None:
            self.frozen.load_state_dict(state.get('frozen', {}))
        self.updates = int(state.get('updates', 0))
