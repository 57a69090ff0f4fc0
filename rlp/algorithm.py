"""RLP as a Composer ``Algorithm``: thoughts at chosen positions, information-gain reward, clipped surrogate.

Events used:
  - ``INIT``: resolve the thought template against the tokenizer (refuses missing / inconsistent tags); allocate
    the teacher copies from the unwrapped HF module (INIT runs before Composer's FSDP wrap; see ``rlp.teacher``).
  - ``BEFORE_TRAIN_BATCH`` (full device batch, before microbatching; reruns with auto-microbatching): record the
    global batch index, at the first batch move the teachers to the device and set phi <- theta (unless restored
    from a checkpoint; under FSDP theta is gathered with ``summon_full_params``), count the positions of the
    whole batch on all ranks (the RLP normaliser), reset the per-batch accumulators.
  - ``AFTER_LOSS`` (each microbatch): choose positions, sample G thoughts, score, and replace ``state.loss`` by
    ``{'total': ntp_weight*NTP + rlp_weight*RLP, 'ntp': NTP, 'rlp': RLP}``.
  - ``BATCH_END`` (after the optimizer step): EMA update, ``rlp/...`` metrics, the thought JSONL, counters.

Decisions where the paper is silent (see also ``rlp.template``, ``rlp.rollouts``, ``rlp.teacher``):
  - Thought layout ``[instruction] prefix <think> c </think> x_t``; x_t directly after the closing tag; no chat
    template; the no-think query is the same prompt without ``<think> c </think>``.
  - A thought stops at a sampled closing tag, which is a trained thought token; at ``max_thought_tokens`` sampled
    tokens it is force-closed with an untrained closing tag and counted as truncated (``rlp/truncation_rate``).
  - S_pred is read from the training forward (detached, temperature 1); the policy is softmax(logits / T).
  - log pi_old = the sampler's log-probs (``loss.behaviour_logprobs='sampler'``); one optimizer step per batch.
  - Normalisation (its one owner is ``rlp.objective.clipped_surrogate``, fed here): the RLP loss of a batch is the
    mean over ALL rollouts of the global batch of each rollout's length-normalised surrogate. Every rollout has
    >= 1 trained token, so the count N = G * (positions of the batch, all ranks) is known at BEFORE_TRAIN_BATCH.
    Composer multiplies a microbatch's loss by s_m = n_m / C (n_m rows in the microbatch, C the mean rows per
    rank) and DDP averages over W ranks, so microbatch m passes ``normalizer = N * n_m / (C * W)``: the update is
    identical for 1 microbatch of 8 rows and 8 of 1, whatever rows have no eligible position. This assumes
    Composer's default sample-based accumulation (not ``accumulate_train_batch_on_tokens``).
  - A microbatch without eligible positions adds 0 to the RLP loss (counted in ``rlp/rows_skipped``). Under
    torch.distributed a rank without positions still runs one dummy rollout (weight 0) so that collective
    forwards stay in step.

Cost and limits: all P*G rollouts of a microbatch go through one training forward; the thought tokens' log-probs
are computed from the final hidden states in checkpointed chunks of ``loss.logprob_chunk_tokens`` (``rlp.logprobs``),
so full-vocabulary logits are never stored, but activations still grow with positions per microbatch x G x thought
length: size ``device_train_microbatch_size`` and ``positions.max_per_sample`` accordingly. The reported
``loss/train/rlp`` is ~0 by construction (advantages sum to 0 in each group and the ratio is ~1); the gradient is
not. One device and DDP are tested on CPU; FSDP1 (``use_orig_params=True``) keeps one full teacher copy per rank
(see ``rlp.teacher``); tested with Composer on one GPU (``@pytest.mark.gpu``) and, as raw FSDP FULL_SHARD without
Composer (whose FSDP needs CUDA), on 2 gloo CPU ranks. Algorithm state under
``state_dict_type: sharded`` is saved by rank 0 as one pickled item of Composer's ``algorithms`` list (replicated,
like a monolithic checkpoint's).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from composer.core import Algorithm, Event, State, get_precision_context
from composer.loggers import Logger

from rlp.keys import row_key
from rlp.objective import clipped_surrogate, group_advantages, information_gain
from rlp.positions import Positions, select_positions
from rlp.rlp_config import RLPConfig
from rlp.rollouts import build_prompts, rollout_uniforms, sample_thoughts
from rlp.scoring import nothink_entropy, nothink_logprob, policy_forward
from rlp.teacher import Teachers, is_fsdp
from rlp.template import ThoughtTemplate, resolve_template
from rlp.thought_log import ThoughtLog

__all__ = ['RLP']

_SUMS = (
    'positions',
    'rows',
    'rows_skipped',
    'rollouts',
    'reward',
    'reward_sq',
    's_pred',
    's_ema',
    'gain_ema',
    's_nothink',
    'gain_current',
    'adv_sq',
    'clip_tokens',
    'tokens',
    'kl_tokens',
    'length',
    'truncated',
)


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, else CPU (gloo)."""
    if torch.distributed.get_backend() == 'nccl':
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def _dist_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class RLP(Algorithm):
    """Reinforcement Learning Pretraining (arXiv 2510.01265) on ordinary text batches.

    Args:
        config: the ``rlp:`` recipe section (:class:`rlp.rlp_config.RLPConfig`).
        seed: part of every generator key (positions and thoughts). Default: 0.
        tokenizer: used for the tags and the thought log; None = ``state.model.tokenizer``.

    The batch must follow the project's contract: ``input_ids``, ``labels``, ``attention_mask``, ``segment_ids``
    (document index per token; without it a row is one document) and ``sample_id`` (without it, rows are keyed by
    a hash of their tokens).

    Example:
        >>> trainer = Trainer(model=HuggingFaceModel(hf, tokenizer=tok, use_logits=True),
        ...                   algorithms=[RLP(RLPConfig(), seed=17)], ...)  # doctest: +SKIP
    """

    def __init__(self, config: RLPConfig, *, seed: int = 0, tokenizer: Any = None) -> None:
        self.config = config
        self.seed = int(seed)
        self.tokenizer = tokenizer
        self.template: Optional[ThoughtTemplate] = None
        self.teachers = Teachers(config.teacher.kind, config.teacher.tau)
        self.thought_log = ThoughtLog(config.log)
        self.batch_index = 0
        self.totals = {'positions': 0, 'rows_skipped': 0, 'batches': 0}
        self._norm: tuple[float, float] = (0.0, 1.0)  # (N rollouts global, rows all ranks)
        self._acc: dict[str, float] = {}
        self._ratio = [math.inf, -math.inf]
        self._len_max = 0

    def __repr__(self) -> str:
        return f'RLP(seed={self.seed}, config={self.config!r})'

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.INIT, Event.BEFORE_TRAIN_BATCH, Event.AFTER_LOSS, Event.BATCH_END)

    def apply(self, event: Event, state: State, logger: Logger) -> Optional[int]:
        if event == Event.INIT:
            self._init(state)
        elif event == Event.BEFORE_TRAIN_BATCH:
            self._start_batch(state)
        elif event == Event.AFTER_LOSS:
            self._microbatch(state)
        elif event == Event.BATCH_END:
            self._end_batch(state, logger)
        return None

    # ---------------------------------------------------------------- events
    def _init(self, state: State) -> None:
        if self.tokenizer is None:
            self.tokenizer = getattr(state.model, 'tokenizer', None)
        self.template = resolve_template(self.tokenizer, self.config.template)
        if not is_fsdp(self._hf(state)):  # INIT runs before Composer's FSDP wrap: copy the unwrapped module
            self.teachers.create(self._hf(state))
        rows = self._hf(state).get_input_embeddings().weight.shape[0]
        if max(self.template.open_id, self.template.close_id) >= rows:
            raise ValueError(
                f'thought tags have ids {self.template.open_id}/{self.template.close_id} but the model '
                f'has only {rows} embedding rows; resize the embeddings (rlp.template.add_tags=true)'
            )

    def _start_batch(self, state: State) -> None:
        if self.template is None:
            self._init(state)
        self.batch_index = int(state.timestamp.batch.value)
        batch = state.batch
        self.teachers.ensure(self._hf(state), batch['input_ids'].device)
        pos = self._positions(batch, count_only=True)
        world, _ = _dist_world()
        counts = torch.tensor([float(len(pos)), float(batch['input_ids'].shape[0])])
        if world > 1:
            counts = counts.to(_comm_device())
            torch.distributed.all_reduce(counts)
            counts = counts.cpu()
        self._norm = (float(counts[0]) * self.config.rollouts.group_size, float(counts[1]))
        self._acc = {k: 0.0 for k in _SUMS}
        self._ratio = [math.inf, -math.inf]
        self._len_max = 0
        self.thought_log.reset()

    def _microbatch(self, state: State) -> None:
        cfg = self.config
        batch = state.batch
        ntp = state.loss['total'] if isinstance(state.loss, dict) else state.loss
        ntp = ntp.mean() if ntp.dim() else ntp
        world, rank = _dist_world()
        pos = self._positions(batch, model=self.teachers.ema.module)
        self._acc['rows'] += pos.num_rows
        self._acc['rows_skipped'] += pos.rows_without_position
        dummy = len(pos) == 0 and world > 1
        if dummy:
            pos = _dummy_position(batch['input_ids'], cfg.positions.min_context)
        if len(pos) == 0:
            rlp = torch.zeros((), device=ntp.device, dtype=torch.float32)
        else:
            rlp = self._rlp_loss(state, batch, pos, rank, weight=0.0 if dummy else 1.0)
        total = cfg.loss.ntp_weight * ntp + cfg.loss.rlp_weight * rlp
        state.loss = {'total': total, 'ntp': ntp.detach(), 'rlp': rlp.detach()}

    def _end_batch(self, state: State, logger: Logger) -> None:
        self.teachers.update(self._hf(state))
        acc = dict(self._acc)
        world, _ = _dist_world()
        ratio, len_max = list(self._ratio), float(self._len_max)
        if world > 1:
            dev = _comm_device()
            sums = torch.tensor([acc[k] for k in _SUMS], dtype=torch.float64, device=dev)
            torch.distributed.all_reduce(sums)
            acc = dict(zip(_SUMS, sums.tolist()))
            ext = torch.tensor([-ratio[0], ratio[1], len_max], dtype=torch.float64, device=dev)
            torch.distributed.all_reduce(ext, op=torch.distributed.ReduceOp.MAX)
            ratio, len_max = [-float(ext[0]), float(ext[1])], float(ext[2])
        self.totals['positions'] += int(acc['positions'])
        self.totals['rows_skipped'] += int(acc['rows_skipped'])
        self.totals['batches'] += 1
        logger.log_metrics(_summarise(acc, ratio, len_max, self.totals, self.teachers.updates))
        self.thought_log.flush()

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _hf(state: State) -> torch.nn.Module:
        inner = getattr(state.model, 'module', state.model)
        return getattr(inner, 'model', inner)

    def _positions(self, batch: dict, count_only: bool = False, model: Any = None) -> Positions:
        cfg = self.config.positions
        assert self.template is not None
        entropy = None
        if cfg.strategy == 'entropy' and not count_only:
            entropy = nothink_entropy(model, batch['input_ids'], batch.get('segment_ids'), self._pad_id())
        return select_positions(
            batch['input_ids'],
            batch.get('segment_ids'),
            row_key(batch.get('sample_id'), batch['input_ids']),
            cfg,
            self.template.excluded_targets,
            seed=self.seed,
            batch_index=self.batch_index,
            attention_mask=batch.get('attention_mask'),
            entropy=entropy,
        )

    def _pad_id(self) -> int:
        assert self.template is not None
        return self.template.pad_id if self.template.pad_id is not None else (self.template.eos_id or 0)

    def _normalizer(self, rows: int) -> float:
        """N * n_m / (C * W) = N * n_m / (rows on all ranks); see the module docstring."""
        n_rollouts, rows_all = self._norm
        return n_rollouts * rows / max(rows_all, 1.0)

    def _rlp_loss(self, state: State, batch: dict, pos: Positions, rank: int, weight: float) -> torch.Tensor:
        cfg, tpl = self.config, self.template
        assert tpl is not None
        world, _ = _dist_world()
        pad = self._pad_id()
        keys = row_key(batch.get('sample_id'), batch['input_ids'])
        prompts = build_prompts(batch['input_ids'], pos, tpl, pad)
        rkeys = [(self.seed, self.batch_index, keys[r], t) for r, t in zip(pos.row.tolist(), pos.target.tolist())]
        u = rollout_uniforms(rkeys, cfg.rollouts.group_size, cfg.rollouts.max_thought_tokens)
        with get_precision_context(state.precision, state.precision_config):
            ro = sample_thoughts(
                state.model,
                state.model,
                prompts,
                u,
                temperature=cfg.rollouts.temperature,
                top_p=cfg.rollouts.top_p,
                close_id=tpl.close_id,
                pad_id=pad,
                synced=world > 1,
            )
            s_ema = nothink_logprob(self.teachers.ema.module, prompts)
            base_module = self.teachers.baseline_module()
            if cfg.teacher.kind == 'ema':
                s_base = s_ema
            elif base_module is None:
                s_base = ro.nothink_logp
            else:
                s_base = nothink_logprob(base_module, prompts)
            logp_new, s_pred = policy_forward(
                state.model,
                prompts,
                ro,
                temperature=cfg.rollouts.temperature,
                pad_id=pad,
                chunk_tokens=cfg.loss.logprob_chunk_tokens,
            )
        rewards = information_gain(s_pred.float(), s_base.float())  # (P, G)
        adv = group_advantages(rewards, std_normalize=cfg.loss.std_normalize)
        logp_old = ro.logp if cfg.loss.behaviour_logprobs == 'sampler' else logp_new.detach()
        loss, m = clipped_surrogate(
            logp_new,
            logp_old,
            adv,
            ro.mask,
            cfg.loss.eps_low,
            cfg.loss.eps_high,
            normalizer=self._normalizer(int(batch['input_ids'].shape[0])),
        )
        if weight == 0.0:
            return loss * 0.0
        self._accumulate(pos, ro, rewards, s_pred, s_ema, adv, m)
        if self.thought_log.due(self.batch_index, rank):
            self.thought_log.collect(
                self.tokenizer,
                batch_index=self.batch_index,
                input_ids=batch['input_ids'],
                row=pos.row,
                start=pos.start,
                target=pos.target,
                sample_keys=keys,
                tokens=ro.tokens.cpu(),
                lengths=ro.lengths.cpu(),
                truncated=ro.truncated.cpu(),
                rewards=rewards.cpu(),
                s_pred=s_pred.cpu(),
                s_ema=s_ema.cpu(),
                advantages=adv.cpu(),
            )
        return loss

    def _accumulate(
        self,
        pos: Positions,
        ro: Any,
        rewards: torch.Tensor,
        s_pred: torch.Tensor,
        s_ema: torch.Tensor,
        adv: torch.Tensor,
        m: dict[str, torch.Tensor],
    ) -> None:
        a, g = self._acc, rewards.shape[1]
        s_pred, s_ema, nothink = s_pred.float(), s_ema.float().unsqueeze(1), ro.nothink_logp.float().unsqueeze(1)
        a['positions'] += len(pos)
        a['rollouts'] += rewards.numel()
        a['reward'] += float(rewards.sum())
        a['reward_sq'] += float((rewards**2).sum())
        a['s_pred'] += float(s_pred.sum())
        a['s_ema'] += float(s_ema.sum()) * g
        a['gain_ema'] += float((s_pred - s_ema).sum())
        a['s_nothink'] += float(nothink.sum()) * g
        a['gain_current'] += float((s_pred - nothink).sum())
        a['adv_sq'] += float((adv**2).sum())
        a['tokens'] += float(m['num_tokens'])
        a['clip_tokens'] += float(m['clip_fraction'] * m['num_tokens'])
        a['kl_tokens'] += float(m['approx_kl'] * m['num_tokens'])
        a['length'] += float(ro.lengths.sum())
        a['truncated'] += float(ro.truncated.sum())
        self._ratio = [min(self._ratio[0], float(m['ratio_min'])), max(self._ratio[1], float(m['ratio_max']))]
        self._len_max = max(self._len_max, int(ro.lengths.max()))

    # ---------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """Teacher weights (CPU tensors) and counters; no generators or custom classes (safe loader)."""
        return {
            'teacher': self.teachers.state_dict(),
            'totals': dict(self.totals),
            'thoughts_written': self.thought_log.written,
            'seed': self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (teacher weights are applied when the teacher copy is created)."""
        self.teachers.load_state_dict(state.get('teacher', {}))
        self.totals.update({k: int(v) for k, v in state.get('totals', {}).items()})
        self.thought_log.written = int(state.get('thoughts_written', 0))


def _dummy_position(input_ids: torch.Tensor, min_context: int) -> Positions:
    """One throw-away position (row 0, last token) so a rank without positions joins the collective forwards."""
    length = input_ids.shape[1]
    t = torch.tensor([length - 1])
    return Positions(
        row=torch.tensor([0]), target=t, start=(t - min_context).clamp(min=0), num_rows=0, rows_without_position=0
    )


def _summarise(
    a: dict[str, float], ratio: list[float], len_max: float, totals: dict[str, int], ema_updates: int
) -> dict[str, float]:
    """Per-batch ``rlp/...`` metrics from accumulated sums (positions-free batches report zeros and counts)."""
    n, tok = max(a['rollouts'], 1.0), max(a['tokens'], 1.0)
    mean_r = a['reward'] / n
    has = a['rollouts'] > 0
    return {
        'rlp/reward_mean': mean_r,
        'rlp/reward_std': math.sqrt(max(a['reward_sq'] / n - mean_r**2, 0.0)),
        'rlp/s_pred': a['s_pred'] / n,
        'rlp/s_ema': a['s_ema'] / n,
        'rlp/gain_vs_ema': a['gain_ema'] / n,
        'rlp/s_nothink_current': a['s_nothink'] / n,
        'rlp/gain_vs_current': a['gain_current'] / n,
        'rlp/advantage_std': math.sqrt(a['adv_sq'] / n),
        'rlp/clip_fraction': a['clip_tokens'] / tok,
        'rlp/approx_kl': a['kl_tokens'] / tok,
        'rlp/ratio_min': ratio[0] if has else 1.0,
        'rlp/ratio_max': ratio[1] if has else 1.0,
        'rlp/thought_len_mean': a['length'] / n,
        'rlp/thought_len_max': len_max,
        'rlp/truncation_rate': a['truncated'] / n,
        'rlp/positions': a['positions'],
        'rlp/positions_per_row': a['positions'] / max(a['rows'], 1.0),
        'rlp/rows_skipped': a['rows_skipped'],
        'rlp/positions_total': float(totals['positions']),
        'rlp/rows_skipped_total': float(totals['rows_skipped']),
        'rlp/ema_updates': float(ema_updates),
    }
