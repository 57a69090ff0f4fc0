"""rlp.config: paper defaults, strict construction from mappings (unknown keys at any depth rejected) and the
cross-field checks, each with its one-line message."""

from __future__ import annotations

import pytest

from rlp.config import RLPConfig
from rlp.strictcfg import ConfigError


def test_defaults_are_the_papers_settings():
    """G=16, T=0.7, 2048-token thoughts, tau 0.999, one uniform position per document, no NTP term, eps 0.2."""
    cfg = RLPConfig.from_dict({})
    assert (cfg.rollouts.group_size, cfg.rollouts.temperature, cfg.rollouts.max_thought_tokens) == (16, 0.7, 2048)
    assert (cfg.teacher.kind, cfg.teacher.tau) == ('ema', 0.999)
    assert (cfg.positions.strategy, cfg.positions.unit, cfg.positions.k) == ('uniform', 'document', 1)
    assert (cfg.loss.ntp_weight, cfg.loss.rlp_weight, cfg.loss.eps_low, cfg.loss.eps_high) == (0.0, 1.0, 0.2, 0.2)
    assert cfg.loss.std_normalize is False and cfg.log.path is None
    assert RLPConfig.from_dict(cfg.to_dict()) == cfg


def test_nested_values_and_unknown_keys():
    """Nested sections are built; a typo at depth 2 is an error naming the path and the allowed keys."""
    cfg = RLPConfig.from_dict({'rollouts': {'group_size': 4, 'top_p': 0.9}, 'teacher': {'kind': 'frozen'}})
    assert cfg.rollouts.group_size == 4 and cfg.teacher.kind == 'frozen'
    with pytest.raises(ConfigError, match=r'rlp\.rollouts\.groupsize.*group_size'):
        RLPConfig.from_dict({'rollouts': {'groupsize': 4}})
    with pytest.raises(ConfigError, match='allowed values'):
        RLPConfig.from_dict({'teacher': {'kind': 'mean'}})


@pytest.mark.parametrize(
    'section, values, message',
    [
        ('rollouts', {'group_size': 1}, 'group_size must be >= 2'),
        ('rollouts', {'temperature': 0}, 'temperature must be > 0'),
        ('rollouts', {'top_p': 1.5}, r'top_p must be in \(0, 1\]'),
        ('rollouts', {'max_thought_tokens': 0}, 'max_thought_tokens must be > 0'),
        ('loss', {'eps_low': 1.0}, r'eps_low must be in \[0, 1\)'),
        ('loss', {'eps_high': -0.1}, 'eps_high must be >= 0'),
        ('loss', {'ntp_weight': 0, 'rlp_weight': 0}, 'nothing would be trained'),
        ('loss', {'rlp_weight': -1}, 'rlp_weight must be >= 0'),
        ('loss', {'logprob_chunk_tokens': 0}, 'logprob_chunk_tokens must be > 0'),
        ('teacher', {'tau': 1.5}, r'tau must be in \[0, 1\]'),
        ('positions', {'max_context': 0}, 'max_context must be > 0'),
        ('positions', {'max_per_sample': 0}, 'max_per_sample must be > 0'),
        ('log', {'every_n_batches': 0}, 'every_n_batches must be > 0'),
        ('log', {'max_rows': 0}, 'max_rows must be > 0'),
        ('reward', {'kind': 'horizon', 'horizon': 0}, r'rlp\.reward\.horizon must be >= 1, got 0'),
        ('reward', {'kind': 'horizon', 'discount': 0}, r'rlp\.reward\.discount must be in \(0, 1\], got 0'),
        ('reward', {'kind': 'horizon', 'discount': 1.5}, r'discount must be in \(0, 1\]'),
        ('reward', {'kind': 'rpt', 'horizon': 8}, r"rlp\.reward\.horizon=8 with kind='rpt'.*only by kind horizon"),
        ('reward', {'discount': 0.7}, r"rlp\.reward\.discount=0\.7 with kind='info_gain'"),
        ('reward', {'kind': 'rpt_', 'horizon': 8}, 'allowed values'),
    ],
)
def test_bad_values_are_refused(section, values, message):
    """Each out-of-range value raises ConfigError with a message naming the key and the rule."""
    with pytest.raises(ConfigError, match=message):
        RLPConfig.from_dict({section: values})


def test_after_texts_go_with_the_after_strategy():
    """positions.after is required by, and only allowed with, strategy after; empty texts are refused."""
    import pytest

    from rlp.config import RLPConfig
    from rlp.strictcfg import ConfigError

    assert RLPConfig.from_dict({'positions': {'strategy': 'after', 'after': ['=']}}).positions.after == ['=']
    for bad in ({'strategy': 'after'}, {'after': ['=']}, {'strategy': 'after', 'after': ['']}):
        with pytest.raises(ConfigError, match='after'):
            RLPConfig.from_dict({'positions': bad})


def test_reward_kinds_and_their_defaults():
    """info_gain is the default (one target); horizon takes k 8 and gamma 0.7 unless given; the resolved config
    round-trips through to_dict; every refusal is one line."""
    assert RLPConfig.from_dict({}).reward.kind == 'info_gain' and RLPConfig.from_dict({}).reward.tokens == 1
    horizon = RLPConfig.from_dict({'reward': {'kind': 'horizon'}}).reward
    assert (horizon.horizon, horizon.discount, horizon.tokens) == (8, 0.7, 8)
    cfg = RLPConfig.from_dict({'reward': {'kind': 'horizon', 'horizon': 3, 'discount': 1}})
    assert (cfg.reward.horizon, cfg.reward.discount) == (3, 1.0) and RLPConfig.from_dict(cfg.to_dict()) == cfg
    assert RLPConfig.from_dict({'reward': {'kind': 'rpt'}}).reward.tokens == 1
    with pytest.raises(ConfigError) as err:
        RLPConfig.from_dict({'reward': {'kind': 'rpt', 'discount': 0.5}})
    assert '\n' not in str(err.value) and 'set rlp.reward.kind: horizon' in str(err.value)
