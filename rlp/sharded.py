"""FSDP2 (``fully_shard``) helpers for the teachers: a copy of the policy that holds the policy's own sharding.

Under FSDP2 every parameter of the policy is a DTensor sharded on dim 0 over a device mesh (rank r holds rows
[r*ceil(n/W), (r+1)*ceil(n/W)) of each tensor). A teacher built here:

1. :func:`meta_copy` (Event.INIT, before Composer shards the policy): a ``copy.deepcopy`` of the unwrapped HF module
   whose parameters and buffers are meta tensors (fp32 for floating ones), so no rank ever allocates a full copy;
   tied parameters stay tied (one meta tensor per original tensor).
2. :func:`shard_like` (after Composer's ``fully_shard``, before a checkpoint loads): ``fully_shard`` is applied to
   the copy's modules with the same names as the policy's FSDP modules (plus untied input embeddings and head, each
   its own unit), innermost first, on the policy's mesh, without a mixed-precision policy (the copy stays fp32),
   then ``to_empty`` allocates each rank's local shards.
   Same global shapes, same mesh, same ``Shard(0)`` placement: phi's local shard covers exactly theta's rows.
3. The EMA update is then elementwise on local shards (:func:`local_pairs`), with no communication; the teacher's
   forward all-gathers like the policy's (a collective: every rank must run it), and :func:`reshard` frees the
   gathered weights after it (FSDP2 keeps the root module's weights gathered after a forward, for the backward
   that a teacher never runs).

Per-rank memory: the copy's shards, 1/W of the full fp32 copy (plus padding rows when W does not divide a tensor's
first dimension), and one FSDP unit's gathered weights during its forward.
"""

from __future__ import annotations

import copy
from typing import Iterator

import torch

__all__ = ['fsdp2_module_names', 'is_sharded', 'local_pairs', 'meta_copy', 'reshard', 'shard_like']


def _fsdp_module_cls():
    from torch.distributed.fsdp import FSDPModule

    return FSDPModule


def fsdp2_module_names(module: torch.nn.Module) -> list[str]:
    """Names (as in ``named_modules``; '' for ``module`` itself) of the FSDP2 modules in ``module``."""
    cls = _fsdp_module_cls()
    return [name for name, m in module.named_modules() if isinstance(m, cls)]


def is_sharded(module: torch.nn.Module) -> bool:
    """True if any parameter of ``module`` is a DTensor (an FSDP2-sharded module)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` in which every parameter and buffer is a meta tensor (floating ones fp32).

    Parameters keep ``requires_grad=False``; tensors shared by several modules (tied weights) stay shared.
    """
    memo: dict[int, object] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in memo:
            dtype = torch.float32 if p.is_floating_point() else p.dtype
            memo[id(p)] = torch.nn.Parameter(torch.empty(p.shape, dtype=dtype, device='meta'), requires_grad=False)
    for _, b in model.named_buffers(remove_duplicate=False):
        if id(b) not in memo:
            dtype = torch.float32 if b.is_floating_point() else b.dtype
            memo[id(b)] = torch.empty(b.shape, dtype=dtype, device='meta')
    return copy.deepcopy(model, memo)


def shard_like(copy_: torch.nn.Module, policy: torch.nn.Module, device: torch.device) -> None:
    """In place: shard ``copy_`` (a :func:`meta_copy` of ``policy`` before it was sharded) as ``policy`` is sharded
    by FSDP2 now, and allocate its local shards on ``device`` (values undefined until synced or loaded).

    Raises ValueError when ``policy`` holds no DTensor parameter (not sharded by FSDP2).
    """
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    mesh = next((p.device_mesh for p in policy.parameters() if isinstance(p, DTensor)), None)
    if mesh is None:
        raise ValueError('RLP teacher: the policy holds no FSDP2 (DTensor) parameter; nothing to shard like')
    names = [n for n in fsdp2_module_names(policy) if n]
    modules = dict(copy_.named_modules())
    units = [modules[n] for n in names]
    # untied input embeddings and head get units of their own (not what the policy does: its root unit holds them,
    # gathered for the whole forward and backward); a teacher forward then gathers at most one of them at a time.
    # The placement of every parameter is the same either way: each is split by rows over the mesh.
    emb, head = copy_.get_input_embeddings(), copy_.get_output_embeddings()
    if emb is not None and head is not None and emb.weight is not head.weight:
        units += [m for m in (emb, head) if not any(m is u or _contains(u, m) for u in units)]
    # innermost first (fully_shard of a parent leaves the parameters of already-sharded children alone); root last
    for module in sorted(units, key=lambda m: -_depth(copy_, m)):
        fully_shard(module, mesh=mesh, reshard_after_forward=True)
    fully_shard(copy_, mesh=mesh, reshard_after_forward=True)
    copy_.to_empty(device=device)
    for p in copy_.parameters():
        p.requires_grad_(False)


def _contains(parent: torch.nn.Module, child: torch.nn.Module) -> bool:
    return any(m is child for m in parent.modules())


def _depth(root: torch.nn.Module, module: torch.nn.Module) -> int:
    return next(name.count('.') + 1 for name, m in root.named_modules() if m is module)


def local_pairs(
    teacher: torch.nn.Module, src: dict[str, torch.Tensor]
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(name, phi_local, theta_local)`` for each parameter of ``teacher``: the local shards of two DTensors with
    the same mesh, placements and local shape (plain tensors pass through). Raises ValueError on a layout mismatch."""
    from torch.distributed.tensor import DTensor

    for name, phi in teacher.named_parameters():
        if name not in src:
            raise KeyError(
                f'RLP teacher: parameter {name!r} not found in the model; the teacher must be a copy of the same '
                f'architecture'
            )
        theta = src[name].detach()
        if isinstance(phi, DTensor) != isinstance(theta, DTensor):
            raise ValueError(
                f'RLP teacher: {name!r} is sharded in only one of teacher and policy; shard the teacher like the '
                f'policy (rlp.sharded.shard_like) after the policy is sharded'
            )
        if isinstance(phi, DTensor):
            if phi.placements != theta.placements or phi.to_local().shape != theta.to_local().shape:
                raise ValueError(
                    f'RLP teacher: {name!r} is sharded as {phi.placements} {tuple(phi.to_local().shape)} in the '
                    f'teacher but {theta.placements} {tuple(theta.to_local().shape)} in the policy'
                )
            yield name, phi.to_local(), theta.to_local()
        else:
            yield name, phi, theta


def reshard(module: torch.nn.Module) -> None:
    """Free the gathered weights of every FSDP2 module in ``module`` (a no-op for modules already sharded)."""
    cls = _fsdp_module_cls()
    for m in module.modules():
        if isinstance(m, cls):
            m.reshard()
