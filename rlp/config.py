"""Typed configuration of the RLP algorithm (the recipe's ``rlp:`` section).

Defaults are the paper's settings where the paper gives one (arXiv 2510.01265: G = 16, temperature 0.7,
2048-token thoughts, tau = 0.999, one uniform position per document, no NTP term); where the paper is silent the
default is the documented choice of this project (``docs/design.md``, "Decisions where the paper is silent"). Build
from a mapping with :meth:`RLPConfig.from_dict`, which rejects unknown keys at any depth (``rlp.strictcfg.build``);
cross-field rules are checked in each ``__post_init__`` with one-line errors that name the value, the rule and
the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional

from rlp.strictcfg import ConfigError, build

__all__ = [
    'LossConfig',
    'PositionsConfig',
    'RLPConfig',
    'RewardConfig',
    'RolloutConfig',
    'TeacherConfig',
    'TemplateConfig',
    'ThoughtLogConfig',
]


def _positive(where: str, value: Optional[int | float], fix: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigError(f'{where} must be > 0, got {value!r}; {fix}')


@dataclass
class PositionsConfig:
    """Which target tokens x_t get thoughts.

    Attributes:
        strategy: ``uniform`` (the paper: positions drawn uniformly among the eligible ones), ``entropy``
            (the k eligible positions of highest no-think entropy under the teacher, RPT-style filtering) or
            ``after`` (uniformly among the eligible positions that directly follow one of the ``after`` texts,
            e.g. ``['Answer: ', '=']``: a fixed choice of answer spans, not the paper's).
        unit: ``document`` (the paper: k positions per document segment) or ``sample`` (k per packed row).
        k: positions per unit. Default 1 (the paper).
        min_context: a position is eligible only if its own document offers at least this many prefix tokens.
        max_context: keep at most this many prefix tokens (the tail) as the thought's context; None = all of
            the document's prefix (the paper caps context at 2048).
        max_per_sample: cap on positions per packed row (documents beyond it are dropped at random, keyed);
            None = no cap.
        after: the texts a target must directly follow (tokenised without special tokens, matched as token ids
            inside the target's own document); only with ``strategy: after``.
    """

    strategy: Literal['uniform', 'entropy', 'after'] = 'uniform'
    unit: Literal['document', 'sample'] = 'document'
    k: int = 1
    min_context: int = 16
    max_context: Optional[int] = 2048
    max_per_sample: Optional[int] = None
    after: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if (self.strategy == 'after') != bool(self.after):
            raise ConfigError(
                f'rlp.positions.after={self.after!r} with strategy={self.strategy!r}: the after texts are used by, '
                f'and needed by, strategy after only; e.g. strategy: after, after: ["=", "Answer: "]'
            )
        if any(not text for text in self.after):
            raise ConfigError('rlp.positions.after holds an empty text; every entry must be a non-empty string')
        _positive('rlp.positions.k', self.k, "use 1 for the paper's one position per document")
        if self.min_context < 1:
            raise ConfigError(
                f'rlp.positions.min_context must be >= 1, got {self.min_context}; a thought needs '
                f'at least one prefix token to condition on'
            )
        _positive(
            'rlp.positions.max_context', self.max_context, 'use null for the whole document prefix', allow_none=True
        )
        if self.max_context is not None and self.max_context < self.min_context:
            raise ConfigError(
                f'rlp.positions.max_context ({self.max_context}) < min_context '
                f'({self.min_context}); no position could ever be used; raise max_context'
            )
        _positive('rlp.positions.max_per_sample', self.max_per_sample, 'use null for no cap', allow_none=True)


@dataclass
class RolloutConfig:
    """Thought sampling.

    Attributes:
        group_size: G thoughts per position (>= 2: the group mean is the baseline). Paper: 16.
        temperature: sampling temperature (> 0); the policy whose log-probs are trained is
            softmax(logits / temperature). Paper: 0.7.
        top_p: nucleus sampling mass in (0, 1]; 1 = off (the paper states no top-p).
        max_thought_tokens: the most tokens the policy may sample per thought, closing tag included. Paper: 2048.
    """

    group_size: int = 16
    temperature: float = 0.7
    top_p: float = 1.0
    max_thought_tokens: int = 2048

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ConfigError(
                f'rlp.rollouts.group_size must be >= 2, got {self.group_size}; the group-relative '
                f'advantage needs at least two thoughts per position (paper: 16)'
            )
        _positive('rlp.rollouts.temperature', self.temperature, 'use 0.7 (the paper) or 1.0 for the raw policy')
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f'rlp.rollouts.top_p must be in (0, 1], got {self.top_p}; use 1.0 to disable')
        _positive(
            'rlp.rollouts.max_thought_tokens', self.max_thought_tokens, 'the paper uses 2048; budgets <= 512 hurt there'
        )


@dataclass
class TemplateConfig:
    """How a thought is placed: ``[instruction] prefix <think> thought </think> x_t``.

    Attributes:
        open_tag / close_tag: tag strings. With ``tags: special`` each must be ONE token of the tokenizer,
            tokenised the same way alone and inside text; with ``tags: text`` each is the token sequence the
            tokenizer gives the string alone (no special tokens).
        tags: ``special`` (default): each tag is one token (added by ``add_tags`` when missing); the sampler stops
            on the closing token. ``text``: the tags are plain text of several tokens, nothing is added to the
            tokenizer or the model; the sampler stops when a thought's last tokens are the closing string's tokens,
            a thought that reaches ``max_thought_tokens`` gets the whole closing string appended, and training
            treats the closing tokens as it treats the one closing token (trained when sampled, not when forced;
            x_t follows the last of them). The tag tokens stay possible targets, since they are ordinary text.
        instruction: optional text tokenised (no special tokens) and placed before the prefix, for the thought
            and the no-think query alike (so only the thought differs between S_pred and S_EMA). None = none.
        add_tags: if the tokenizer lacks the tags, the training entry adds them as special tokens and resizes the
            embeddings (``rlp.template.add_think_tokens``) before building the Trainer; otherwise refuse.
        tag_init: how the embedding rows of tags added by ``add_tags`` start. ``text`` (default): each tag's row
            is the mean of the rows of the tokens of ``open_init_text`` / ``close_init_text`` (input embeddings, and
            the output embeddings when they are not tied), so the tag starts out as a token the model already reads
            and writes. ``mean``: the mean of all existing rows (transformers' resize default); a pretrained model
            then almost never samples the closing tag (SmolLM2-135M: every thought truncated, docs/pretrained.md).
        open_init_text: with ``tag_init: text``, the text the opening tag starts from. None = the tag string itself
            (its pieces, e.g. ``<``, ``think``, ``>``).
        close_init_text: with ``tag_init: text``, the text the closing tag starts from. Default ``.``: the closing
            tag starts as a sentence end, which a pretrained model samples, so thoughts close; None = the tag string
            itself (reads better after a thought but is never sampled: docs/pretrained.md has the figures).
    """

    open_tag: str = '<think>'
    close_tag: str = '</think>'
    instruction: Optional[str] = None
    tags: Literal['special', 'text'] = 'special'
    add_tags: bool = False
    tag_init: Literal['mean', 'text'] = 'text'
    open_init_text: Optional[str] = None
    close_init_text: Optional[str] = '.'

    def __post_init__(self) -> None:
        for name in ('open_tag', 'close_tag'):
            if not getattr(self, name).strip():
                raise ConfigError(f'rlp.template.{name} is empty; set it to the tag string, e.g. <think>')
        if self.open_tag == self.close_tag:
            raise ConfigError(
                f'rlp.template.open_tag and close_tag are both {self.open_tag!r}; they must '
                f'differ or a thought could never be told from its end'
            )
        if self.tags == 'text' and self.add_tags:
            raise ConfigError(
                'rlp.template.add_tags=true adds the tags as special tokens, but rlp.template.tags=text writes them '
                'as plain text; fix: drop add_tags (or set tags=special)'
            )
        for name, default in (('open_init_text', None), ('close_init_text', '.')):
            value = getattr(self, name)
            if value != default and self.tag_init != 'text':
                raise ConfigError(
                    f'rlp.template.{name}={value!r} is used only with rlp.template.tag_init=text (got '
                    f'{self.tag_init!r}); fix: set tag_init=text, or drop {name}'
                )
            if value is not None and not value:
                raise ConfigError(f'rlp.template.{name} is empty; give the text the tag starts from, or drop it')


@dataclass
class TeacherConfig:
    """The no-think baseline p(x_t | prefix) used in the reward.

    Attributes:
        kind: ``ema`` (paper: EMA copy updated after each optimizer step), ``frozen`` (the weights at the first
            batch) or ``none`` (the current model without a thought). The EMA copy is kept in every case so
            that the information gain against it is always logged.
        tau: EMA decay, phi <- tau*phi + (1-tau)*theta, in [0, 1]. Paper: 0.999.
    """

    kind: Literal['ema', 'frozen', 'none'] = 'ema'
    tau: float = 0.999

    def __post_init__(self) -> None:
        if not 0.0 <= self.tau <= 1.0:
            raise ConfigError(f'rlp.teacher.tau must be in [0, 1], got {self.tau}; the paper uses 0.999')


@dataclass
class LossConfig:
    """Mixing and the clipped surrogate.

    Attributes:
        ntp_weight / rlp_weight: total = ntp_weight*NTP + rlp_weight*RLP. Paper: 0 and 1.
        eps_low / eps_high: clip range [1-eps_low, 1+eps_high] of the per-token ratio; the paper gives none,
            0.2/0.2 is TRL's default. eps_low in [0, 1), eps_high >= 0.
        std_normalize: divide group advantages by the group std (GRPO/TRL default; the paper does not).
        behaviour_logprobs: ``sampler`` uses the log-probs recorded while sampling as log pi_old (the paper's
            theta_old); ``detached`` uses the training forward's own detached log-probs, so the ratio is
            exactly 1 (TRL with one iteration).
        logprob_chunk_tokens: the policy's thought-token log-probs are computed from the final hidden states this
            many tokens at a time, each chunk checkpointed, so (N, T, V) logits are never stored
            (``rlp.logprobs``; transient memory ~3 * chunk * vocab * 4 bytes). None = materialise all logits
            (the fallback anyway for models whose logits are not a plain Linear head).
        packed_forward_tokens: the training forward runs each prompt ONCE followed by its thoughts, in rows of at
            most this many tokens (prompt + whole thoughts, at least one thought per row) under a block attention
            mask (``rlp.packing``): L + G*T tokens per position instead of G*(L + T + 1), the same values and
            gradients. The mask is dense, (rows, W, W), so this caps its memory and the attention's quadratic work.
            Used where the model takes a custom 4D mask (Llama, Qwen2/3, Mistral without sliding window, GPT-2 with
            eager or sdpa attention); other models (flash attention, other architectures) keep the unpacked
            forward. None = always unpacked (one sequence per rollout).
    """

    ntp_weight: float = 0.0
    rlp_weight: float = 1.0
    eps_low: float = 0.2
    eps_high: float = 0.2
    std_normalize: bool = False
    behaviour_logprobs: Literal['sampler', 'detached'] = 'sampler'
    logprob_chunk_tokens: Optional[int] = 2048
    packed_forward_tokens: Optional[int] = 4096

    def __post_init__(self) -> None:
        _positive(
            'rlp.loss.packed_forward_tokens',
            self.packed_forward_tokens,
            'use e.g. 4096, or null for one unpacked sequence per rollout',
            allow_none=True,
        )
        _positive(
            'rlp.loss.logprob_chunk_tokens',
            self.logprob_chunk_tokens,
            'use e.g. 2048, or null to materialise all logits',
            allow_none=True,
        )
        if not 0.0 <= self.eps_low < 1.0:
            raise ConfigError(
                f'rlp.loss.eps_low must be in [0, 1), got {self.eps_low}; the lower clip bound '
                f'1 - eps_low must stay positive (0.2 is the usual choice)'
            )
        if self.eps_high < 0.0:
            raise ConfigError(f'rlp.loss.eps_high must be >= 0, got {self.eps_high}; 0.2 is the usual choice')
        for name in ('ntp_weight', 'rlp_weight'):
            if getattr(self, name) < 0:
                raise ConfigError(f'rlp.loss.{name} must be >= 0, got {getattr(self, name)}')
        if self.ntp_weight == 0 and self.rlp_weight == 0:
            raise ConfigError(
                'rlp.loss.ntp_weight and rlp_weight are both 0; nothing would be trained; '
                'the paper uses rlp_weight 1'
            )


@dataclass
class RewardConfig:
    """What a thought is rewarded with (the formulas are in :mod:`rlp.objective` and ``docs/design.md``).

    Attributes:
        kind: ``info_gain`` (the paper: r = log p_theta(x_t | x_<t, c) - log p_EMA(x_t | x_<t)), ``horizon`` (that
            gain summed over the next ``horizon`` tokens of the document with weights ``discount ** j``, the thought
            staying in the context) or ``rpt`` (RPT's verifiable reward, arXiv 2506.08007: 1 when x_t is the
            policy's greedy prediction after the thought, else 0).
        horizon: k, the tokens x_t .. x_{t+k-1} scored (>= 1; k = 1 is ``info_gain``); only with kind ``horizon``,
            default 8.
        discount: gamma in (0, 1], the weight of the j-th token is gamma ** j; only with kind ``horizon``,
            default 0.7.
    """

    kind: Literal['info_gain', 'horizon', 'rpt'] = 'info_gain'
    horizon: Optional[int] = None
    discount: Optional[float] = None

    def __post_init__(self) -> None:
        if self.kind != 'horizon':
            for name in ('horizon', 'discount'):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f'rlp.reward.{name}={getattr(self, name)!r} with kind={self.kind!r}: {name} is used only by '
                        f'kind horizon; remove it or set rlp.reward.kind: horizon'
                    )
            return
        if self.horizon is None:
            self.horizon = 8
        if self.discount is None:
            self.discount = 0.7
        if self.horizon < 1:
            raise ConfigError(
                f'rlp.reward.horizon must be >= 1, got {self.horizon}; it counts the tokens x_t .. x_(t+k-1) '
                f'scored (1 is the one-token information gain, e.g. 8)'
            )
        if not 0.0 < self.discount <= 1.0:
            raise ConfigError(
                f'rlp.reward.discount must be in (0, 1], got {self.discount}; token j of the horizon is weighted '
                f'discount ** j (e.g. 0.7)'
            )

    @property
    def tokens(self) -> int:
        """Targets scored per position: ``horizon`` for kind horizon, else 1."""
        return int(self.horizon) if self.kind == 'horizon' and self.horizon is not None else 1


@dataclass
class ThoughtLogConfig:
    """The human-readable JSONL of sampled thoughts.

    Attributes:
        every_n_batches: write the thoughts of every N-th batch (rank 0 only).
        path: JSONL file; None disables it (the training entry sets ``<run folder>/thoughts.jsonl``).
        max_rows: the most thoughts written per logged batch.
        context_chars: characters of context tail kept per row.
    """

    every_n_batches: int = 50
    path: Optional[str] = None
    max_rows: int = 8
    context_chars: int = 200

    def __post_init__(self) -> None:
        _positive('rlp.log.every_n_batches', self.every_n_batches, 'use 1 to log every batch')
        _positive('rlp.log.max_rows', self.max_rows, 'or set rlp.log.path to null to disable the log')
        if self.context_chars < 0:
            raise ConfigError(f'rlp.log.context_chars must be >= 0, got {self.context_chars}')


@dataclass
class RLPConfig:
    """The whole ``rlp:`` section of a recipe."""

    positions: PositionsConfig = field(default_factory=PositionsConfig)
    rollouts: RolloutConfig = field(default_factory=RolloutConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    log: ThoughtLogConfig = field(default_factory=ThoughtLogConfig)

    @classmethod
    def from_dict(cls, mapping: Optional[Mapping[str, Any]], where: str = 'rlp') -> 'RLPConfig':
        """Build from a plain mapping; unknown keys at any depth raise ``ConfigError`` naming the allowed keys."""
        return build(cls, mapping, where)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (for logging the resolved config)."""
        return dataclasses.asdict(self)
