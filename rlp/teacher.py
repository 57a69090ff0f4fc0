"""The no-think teacher: our own copies of the model (not ``composer.algorithms.EMA``, which swaps weights).

Kinds (``rlp.teacher.kind``):
  - ``ema``: phi <- tau * phi + (1 - tau) * theta after every optimizer step (the paper, tau = 0.999);
  - ``frozen``: the weights at the first batch, never updated;
  - ``none``: the current model without a thought (no copy needed for the reward).

The EMA copy is kept for every kind, so the information gain against it is always logged: a policy can raise its
gain over the *current* model by degrading its own no-think prediction, and only the EMA-based reward shows that
collapse (``docs/design.md``, "Which numbers to read").

Note on what the teacher changes: S_EMA is the same for the G thoughts of a position, so it cancels exactly in the
group-relative advantage A = G/(G-1)(r - mean r) (NVlabs/RLP#3): with the default options the teacher has NO effect
on the gradient. It changes the logged reward (its value and sign) and anything that depends on the reward's level
rather than its within-group differences (e.g. reward clipping or filtering, none of which is implemented here;
``std_normalize`` also only sees within-group differences).

Precision: the copies are kept in fp32 whatever the policy's dtype (its forward runs under the caller's autocast).
In bf16, ``phi.lerp_(theta, 1 - tau)`` at tau = 0.999 mostly rounds to no change (the step is below half a bf16
ulp of phi), so S_EMA and every logged reward would drift from their definition; fp32 keeps the EMA exact to
fp32 rounding (tested against the closed form over 100 updates with a bf16 policy).

Life cycle (one code path for one device, DDP and FSDP1; FSDP2 below):
  1. ``create`` (``Event.INIT``, before Composer wraps the model with FSDP): ``copy.deepcopy`` of the unwrapped HF
     module, eval mode, ``requires_grad=False``. If the module is on the meta device (``init_device: meta``) the
     copy is a meta skeleton, materialised at step 2.
  2. ``ensure`` (first batch): the copy is moved to the batch's device (meta skeletons: ``to_empty``) and, unless a
     checkpoint supplied its weights, set to phi <- theta from the model as it is at the first batch, read under
     :func:`full_params`. Syncing at the first batch (not trusting the INIT copy) keeps phi = theta when θ changes
     between INIT and the first batch (FSDP ``sync_module_states``, a weights-only ``load_path``, meta init).
  3. ``update`` (``Event.BATCH_END``): phi <- tau*phi + (1-tau)*theta with θ read under :func:`full_params`.

FSDP2 (``fully_shard``, what ``trainer.fsdp`` selects): the copies hold the policy's own sharding
(:mod:`rlp.sharded`). ``create(model, sharded=True)`` makes a meta skeleton (no rank allocates a full copy);
``shard`` (``Event.BEFORE_LOAD``: after Composer's ``fully_shard``, before a checkpoint loads) applies
``fully_shard`` to the copy's modules named like the policy's FSDP modules, on the policy's mesh, and allocates the
local shards; ``ensure`` and ``update`` run on local shards (phi's rows are exactly theta's rows on each rank: no
communication); the teacher's forward all-gathers one FSDP unit at a time like the policy's (a collective: every
rank scores at the same points, as the ``synced`` rollouts guarantee) and is resharded after it. The shards are
saved and loaded by sharded checkpoints through :class:`rlp.run.algorithm.TeacherShards`. Memory per rank: 1/W of
the fp32 copy (figures in ``docs/design.md``).

FSDP1 (``use_orig_params=True``; reachable from Python, not from recipes): :func:`full_params` gathers the full θ on
every rank with ``FSDP.summon_full_params(model, writeback=False, recurse=True, rank0_only=False)``; a collective,
so every rank must call ``ensure``/``update`` at the same event (they do: BEFORE_TRAIN_BATCH / BATCH_END run on all
ranks). Memory cost: each rank holds ONE FULL (unsharded) copy of the model per teacher (two for ``kind: frozen``)
in fp32, plus a transient full gather of θ during each update.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch

from rlp import sharded as sharding
from rlp.hf import full_params, is_fsdp, is_fsdp2
from rlp.rollouts import Prompts
from rlp.scoring import nothink_horizon, nothink_logprob

__all__ = ['TeacherCopy', 'Teachers', 'ema_update']

_WRAPPER_PREFIXES = ('_fsdp_wrapped_module.', '_checkpoint_wrapped_module.', '_orig_mod.')


def _clean(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, '')
    return name


def _named(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(parameters, buffers) of ``model`` by wrapper-free name, tied aliases included."""
    params = {_clean(k): v for k, v in model.named_parameters(remove_duplicate=False)}
    bufs = {_clean(k): v for k, v in model.named_buffers(remove_duplicate=False)}
    return params, bufs


def ema_update(teacher: torch.nn.Module, model: torch.nn.Module, tau: Optional[float]) -> None:
    """In place: phi <- tau * phi + (1 - tau) * theta for float parameters and buffers; other buffers are copied.

    ``model`` may carry FSDP/checkpoint wrapper prefixes in its names (stripped); under FSDP1 call it inside
    :func:`full_params`. Under FSDP2 both ``teacher`` and ``model`` hold DTensors with the same layout
    (:func:`rlp.sharded.shard_like`) and the update runs on each rank's local shards, without communication.
    ``tau=None`` copies θ (phi <- theta, also over uninitialised memory).

    .. math:: \\phi \\leftarrow \\tau\\,\\phi + (1 - \\tau)\\,\\theta
    """
    with torch.no_grad():
        src, src_buf = _named(model)
        for _, phi, theta in sharding.local_pairs(teacher, src):
            theta = theta.to(phi.device, phi.dtype)
            phi.copy_(theta) if tau is None else phi.lerp_(theta, 1.0 - tau)
        for name, buf in teacher.named_buffers():
            if name not in src_buf:
                continue
            if buf.is_floating_point() and tau is not None:
                buf.lerp_(src_buf[name].to(buf.device, buf.dtype), 1.0 - tau)
            else:
                buf.copy_(src_buf[name])


def _has_meta(module: torch.nn.Module) -> bool:
    return any(t.is_meta for t in list(module.parameters()) + list(module.buffers()))


class TeacherCopy:
    """A copy of the model outside autograd (eval mode, no gradients): the EMA teacher, moved by :func:`ema_update`
    after every step, or the frozen one, never moved. See the module docstring's life cycle. Only its weights are
    checkpointed, as plain tensors under the teacher's kind (not under this class's name)."""

    def __init__(self) -> None:
        self.module: Optional[torch.nn.Module] = None
        self.synced = False  # phi holds real weights: synced from θ at the first batch, or loaded
        self.sharded = False  # an FSDP2 copy: meta until :meth:`shard`, then DTensor shards like the policy's
        self._pending: Optional[dict[str, torch.Tensor]] = None

    def create(self, model: torch.nn.Module, sharded: bool = False) -> None:
        """Allocate the copy from the UNWRAPPED module (INIT); a meta module gives a meta skeleton. ``sharded``: the
        policy is about to be sharded by FSDP2; the copy is a meta skeleton until :meth:`shard`."""
        if self.module is not None:
            return
        if is_fsdp(model) or is_fsdp2(model):
            raise NotImplementedError(
                'RLP teacher: the copy must be created from the unwrapped model at '
                'Event.INIT; add the RLP algorithm to the Trainer instead of wrapping first'
            )
        self.sharded = sharded
        # fp32 whatever the policy's dtype (see the module docstring)
        self.module = sharding.meta_copy(model) if sharded else copy.deepcopy(model).float()
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        if self._pending is not None and not _has_meta(self.module):
            self._load(self._pending)

    def shard(self, policy: torch.nn.Module) -> None:
        """FSDP2: shard the meta skeleton as ``policy`` (the sharded HF module) is sharded and allocate the local
        shards on the policy's device (:func:`rlp.sharded.shard_like`); a no-op once sharded."""
        assert self.module is not None and self.sharded, 'FrozenCopy.create(model, sharded=True) must run first'
        if sharding.is_sharded(self.module):
            return
        device = next(policy.parameters()).device
        sharding.shard_like(self.module, policy, device)
        # buffers are not sharded, and the non-persistent ones (rotary inv_freq) are in no checkpoint: copy them now,
        # or a teacher restored from a checkpoint would run with the uninitialised memory of to_empty
        src = dict(policy.named_buffers(remove_duplicate=False))
        with torch.no_grad():
            for name, buf in self.module.named_buffers():
                if name in src:
                    buf.copy_(src[name])

    def ensure(self, model: torch.nn.Module, device: Optional[torch.device] = None) -> torch.nn.Module:
        """First-batch step: create if needed, move to ``device``, phi <- theta unless restored (collective under
        FSDP: all ranks must call it). A no-op once synced, apart from the device move."""
        if self.module is None:
            self.create(model)
        assert self.module is not None
        if self.sharded:
            self.shard(model)
            if not self.synced:
                sharding.reshard(model)  # theta as local shards (a no-op unless a forward left weights gathered)
                ema_update(self.module, model, None)
                self.synced = True
            return self.module
        if _has_meta(self.module):
            dev = device if device is not None else torch.device('cpu')
            self.module.to_empty(device=dev)
        elif device is not None:
            self.module.to(device)
        if self._pending is not None:
            self._load(self._pending)
        if not self.synced:
            with full_params(model):
                ema_update(self.module, model, None)
            self.synced = True
        return self.module

    def _load(self, weights: dict[str, torch.Tensor]) -> None:
        assert self.module is not None
        self.module.load_state_dict(weights)
        self._pending = None
        self.synced = True

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The copy's weights as CPU tensors (the pending restored weights, or empty, before it holds weights).
        Empty for a sharded copy: its shards travel in :meth:`shard_state` instead."""
        if self.sharded:
            return {}
        if self.module is None or not self.synced:
            return dict(self._pending or {})
        return {k: v.detach().to('cpu', copy=True) for k, v in self.module.state_dict().items()}

    def shard_state(self) -> dict[str, torch.Tensor]:
        """A sharded copy's parameters and buffers by name: the DTensors themselves (a sharded checkpoint writes each
        rank's shards and loads into them in place); empty before :meth:`shard`."""
        if not self.sharded or self.module is None or _has_meta(self.module):
            return {}
        return {k: v.detach() for k, v in self.module.state_dict().items()}

    def load_shard_state(self, weights: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`shard_state` (shard by shard; the values may already be in place); marks the copy synced."""
        if not weights:
            return
        assert self.module is not None and not _has_meta(self.module), 'shard the copy before loading its shards'
        with torch.no_grad():
            for name, t in self.module.state_dict().items():
                if t is not weights[name] and t.data_ptr() != weights[name].data_ptr():
                    t.copy_(weights[name])
        self.synced = True

    def load_state_dict(self, weights: dict[str, torch.Tensor]) -> None:
        """Restore weights now (a materialised copy exists) or at ``ensure``; an empty dict means "not synced yet"."""
        if not weights:
            return
        if self.module is None or _has_meta(self.module):
            self._pending = dict(weights)
        else:
            self._load(weights)


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
        self.ema = TeacherCopy()
        self.frozen = TeacherCopy() if kind == 'frozen' else None
        self.updates = 0

    def _copies(self) -> list[TeacherCopy]:
        return [self.ema] + ([self.frozen] if self.frozen is not None else [])

    @property
    def sharded(self) -> bool:
        """True when the copies are FSDP2 shards (created with ``sharded=True``)."""
        return self.ema.sharded

    def create(self, model: torch.nn.Module, sharded: bool = False) -> None:
        """INIT: allocate the copies from the unwrapped module (values are synced at the first batch); ``sharded``:
        meta skeletons to be sharded like the FSDP2 policy by :meth:`shard`."""
        for c in self._copies():
            c.create(model, sharded)

    def shard(self, policy: torch.nn.Module) -> None:
        """FSDP2, after the policy is sharded and before a checkpoint loads: shard the copies like ``policy``."""
        for c in self._copies():
            c.shard(policy)

    def ensure(self, model: torch.nn.Module, device: Optional[torch.device] = None) -> None:
        """First batch: phi <- theta (no-op once synced or restored); moves the copies to ``device``."""
        for c in self._copies():
            c.ensure(model, device)

    def update(self, model: torch.nn.Module) -> None:
        """One EMA step after an optimizer step (the frozen copy never changes); collective under FSDP."""
        teacher = self.ema.ensure(model)
        if self.sharded:
            sharding.reshard(model)
            ema_update(teacher, model, self.tau)
        else:
            with full_params(model):
                ema_update(teacher, model, self.tau)
        self.updates += 1

    def baseline_module(self) -> Optional[torch.nn.Module]:
        """The module whose no-think log-prob is the reward's baseline; None = the current model (kind none)."""
        if self.kind == 'ema':
            return self.ema.module
        if self.kind == 'frozen':
            return self.frozen.module  # type: ignore[union-attr]
        return None

    def nothink_logprobs(self, prompts: Prompts, current: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s_base, s_ema)``: the reward's baseline and the EMA teacher's no-think log-prob, both (P,), or both
        (P, K) when ``prompts.targets`` holds K targets (:func:`rlp.scoring.nothink_horizon`).

        s_ema = log p_phi(x_t | prefix) from the EMA copy; s_base is s_ema (``ema``), the frozen copy's value
        (``frozen``) or ``current``, the current model's own no-think log-prob (``none``; of the same shape).
        """
        assert self.ema.module is not None, 'Teachers.ensure must run before the teachers are used'
        s_ema = self._score(self.ema.module, prompts)
        base = self.baseline_module()
        if base is None:
            return current, s_ema
        return (s_ema if base is self.ema.module else self._score(base, prompts)), s_ema

    def _score(self, module: torch.nn.Module, prompts: Prompts) -> torch.Tensor:
        out = nothink_logprob(module, prompts) if prompts.targets is None else nothink_horizon(module, prompts)
        if self.sharded:  # a collective forward; free the gathered root weights it left behind
            sharding.reshard(module)
        return out

    def shard_state(self) -> dict[str, Any]:
        """The sharded copies' DTensors (empty unless sharded): state of :class:`rlp.run.algorithm.TeacherShards`."""
        if not self.sharded:
            return {}
        out = {'ema': self.ema.shard_state()}
        if self.frozen is not None:
            out['frozen'] = self.frozen.shard_state()
        return out

    def load_shard_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`shard_state`."""
        self.ema.load_shard_state(state.get('ema', {}))
        if self.frozen is not None:
            self.frozen.load_shard_state(state.get('frozen', {}))

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
