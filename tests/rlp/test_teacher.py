"""rlp.teacher: the EMA update against the formula phi' = tau*phi + (1-tau)*theta computed here, lazy
initialisation, frozen/none kinds, and the state round trip (tensors only, restorable before the copy exists)."""

from __future__ import annotations

import pytest
import torch

from rlp.teacher import Teachers, ema_update
from tests.helpers.tiny_models import build_tiny_model


def _perturb(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)


@pytest.mark.parametrize('kind', ['llama', 'gpt2'])
def test_ema_update_matches_formula(kind):
    """After one update every teacher parameter equals tau*phi + (1-tau)*theta, computed independently."""
    model = build_tiny_model(kind, 64)
    teachers = Teachers('ema', tau=0.9)
    teachers.ensure(model)
    phi0 = {k: v.clone() for k, v in teachers.ema.module.named_parameters()}
    _perturb(model, 1)
    teachers.update(model)
    theta = dict(model.named_parameters())
    for name, phi in teachers.ema.module.named_parameters():
        torch.testing.assert_close(phi, 0.9 * phi0[name] + 0.1 * theta[name].detach())
        assert not phi.requires_grad
    assert not teachers.ema.module.training and teachers.updates == 1


def test_teacher_is_independent_copy_and_tau_extremes():
    """The copy does not alias the model; tau=1 never moves, tau=0 copies theta."""
    model = build_tiny_model('llama', 64)
    t1, t0 = Teachers('ema', 1.0), Teachers('ema', 0.0)
    t1.ensure(model)
    t0.ensure(model)
    before = {k: v.clone() for k, v in t1.ema.module.state_dict().items()}
    _perturb(model, 2)
    t1.update(model)
    t0.update(model)
    for k, v in t1.ema.module.state_dict().items():
        assert torch.equal(v, before[k])
    for (_, v), (_, m) in zip(t0.ema.module.named_parameters(), model.named_parameters()):
        torch.testing.assert_close(v, m.detach())


def test_kinds_select_the_baseline():
    """ema -> the EMA copy; frozen -> the initial weights even after updates; none -> the current model (None)."""
    model = build_tiny_model('llama', 64)
    frozen = Teachers('frozen', 0.5)
    frozen.ensure(model)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    _perturb(model, 3)
    frozen.update(model)
    for k, v in frozen.baseline_module().state_dict().items():
        assert torch.equal(v, init[k])
    assert frozen.ema.module is not frozen.baseline_module()
    ema = Teachers('ema', 0.5)
    ema.ensure(model)
    assert ema.baseline_module() is ema.ema.module
    assert Teachers('none', 0.5).baseline_module() is None
    with pytest.raises(ValueError, match='unknown'):
        Teachers('mean', 0.5)


def test_state_round_trip_before_and_after_creation():
    """state_dict holds only tensors/ints; loading it into a fresh Teachers (before its copy exists) restores the
    exact weights at the first ensure(), and loading after creation overwrites them."""
    model = build_tiny_model('qwen3', 64)
    src = Teachers('frozen', 0.8)
    src.ensure(model)
    _perturb(model, 4)
    src.update(model)
    state = src.state_dict()

    def leaves(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from leaves(v)
        else:
            yield x

    assert all(isinstance(v, torch.Tensor | int) for v in leaves(state))

    fresh_model = build_tiny_model('qwen3', 64, seed=9)
    dst = Teachers('frozen', 0.8)
    dst.load_state_dict(state)
    assert dst.state_dict()['ema'].keys() == state['ema'].keys()  # pending weights are re-saved as they are
    dst.ensure(fresh_model)
    for k, v in dst.ema.module.state_dict().items():
        assert torch.equal(v, state['ema'][k])
    for k, v in dst.frozen.module.state_dict().items():
        assert torch.equal(v, state['frozen'][k])
    assert dst.updates == 1
    other = Teachers('frozen', 0.8)
    other.ensure(fresh_model)
    other.load_state_dict(state)
    for k, v in other.ema.module.state_dict().items():
        assert torch.equal(v, state['ema'][k])


def test_ema_update_handles_integer_buffers():
    """Non-float buffers are copied, float buffers averaged (ema_update on plain modules)."""
    a, b = torch.nn.Module(), torch.nn.Module()
    a.register_buffer('count', torch.tensor(1))
    a.register_buffer('stat', torch.tensor(0.0))
    b.register_buffer('count', torch.tensor(5))
    b.register_buffer('stat', torch.tensor(10.0))
    ema_update(a, b, 0.75)
    assert a.count.item() == 5 and a.stat.item() == pytest.approx(2.5)
