"""RLP as a Composer ``Algorithm``: the event handlers around :func:`rlp.step.rlp_loss`, and little else.

- ``INIT``: resolve the thought template; refuse dropout; copy the teachers from the unwrapped HF module (INIT runs
  before Composer's FSDP wrap; see :mod:`rlp.teacher`); under FSDP2 the copies are meta skeletons and a
  :class:`TeacherShards` callback is added to the state, which carries their shards in sharded checkpoints.
- ``BEFORE_LOAD`` (after Composer's FSDP2 ``fully_shard``, before a checkpoint loads): shard the teachers like the
  policy (:func:`rlp.sharded.shard_like`).
- ``BEFORE_TRAIN_BATCH`` (the device batch; reruns with auto-microbatching): the batch index; phi <- theta at the
  first batch; the rollouts and rows of the whole global batch (:func:`rlp.step.count_rollouts`), from which
  :func:`rlp.step.loss_normalizer` gives each microbatch's denominator.
- ``BEFORE_FORWARD`` / ``AFTER_FORWARD``, with ``ntp_weight: 0`` only: Composer's next-token forward runs on a
  two-token stub and the real microbatch is put back at once, so no NTP forward or backward is wasted (the stub's
  loss enters the total times 0, keeping every forward in the graph).
- ``AFTER_LOSS`` (each microbatch): ``state.loss = {'total': ntp_weight*NTP + rlp_weight*RLP, 'ntp': NTP, 'rlp':
  RLP}`` (no ``ntp`` when skipped).
- ``BATCH_END`` (after the optimizer step): EMA update, ``rlp/...`` metrics (the FLOPs of the RLP part among them,
  :mod:`rlp.flops`), the thought JSONL, counters.
"""

from __future__ import annotations

from typing import Any, Optional

from composer.core import Algorithm, Callback, Event, State, get_precision_context
from composer.loggers import Logger
from composer.utils.parallelism import FSDP2Config

from rlp import dist
from rlp.config import RLPConfig
from rlp.flops import FlopModel
from rlp.hf import is_fsdp, is_fsdp2, unwrap_hf
from rlp.run.thought_log import ThoughtLog
from rlp.stats import RLPStats
from rlp.step import GlobalRollouts, check_no_dropout, count_rollouts, rlp_loss
from rlp.strictcfg import ConfigError
from rlp.teacher import Teachers
from rlp.template import ThoughtTemplate, resolve_template

__all__ = ['RLP', 'TeacherShards']


class RLP(Algorithm):
    """Reinforcement Learning Pretraining (arXiv 2510.01265) on ordinary text batches.

    Args:
        config: the ``rlp:`` recipe section (:class:`rlp.config.RLPConfig`).
        seed: part of every generator key (positions and thoughts). Default: 0.
        tokenizer: used for the tags and the thought log; None = ``state.model.tokenizer``.

    The batch follows the contract of :func:`rlp.step.rlp_loss`.

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
        self.stats = RLPStats()
        self._global = GlobalRollouts(rollouts=0.0, rows=1.0)  # counted at BEFORE_TRAIN_BATCH
        self._batch: Any = None
        self.flop_model: Optional[FlopModel] = None
        self.rank_flops = 0.0  # this rank's RLP FLOPs of the last batch (rlp.flops), for the FLOP counter
        self.batch_flops = 0.0  # all ranks'

    def match(self, event: Event, state: State) -> bool:
        skip_ntp = self.config.loss.ntp_weight == 0 and event in (Event.BEFORE_FORWARD, Event.AFTER_FORWARD)
        shard = event == Event.BEFORE_LOAD and self.teachers.sharded
        return skip_ntp or shard or event in (Event.INIT, Event.BEFORE_TRAIN_BATCH, Event.AFTER_LOSS, Event.BATCH_END)

    def apply(self, event: Event, state: State, logger: Logger) -> Optional[int]:
        if event == Event.INIT:
            self._init(state)
        elif event == Event.BEFORE_LOAD:
            self.teachers.shard(unwrap_hf(state.model))
        elif event == Event.BEFORE_TRAIN_BATCH:
            self._start_batch(state)
        elif event == Event.BEFORE_FORWARD:
            self._batch, state.batch = state.batch, _stub(state.batch)
        elif event == Event.AFTER_FORWARD:
            state.batch = self._batch
        elif event == Event.AFTER_LOSS:
            self._microbatch(state)
        elif event == Event.BATCH_END:
            self._end_batch(state, logger)
        return None

    def _init(self, state: State) -> None:
        hf = unwrap_hf(state.model)
        self.tokenizer = getattr(state.model, 'tokenizer', None) if self.tokenizer is None else self.tokenizer
        self.template = resolve_template(self.tokenizer, self.config.template, hf, self.config.positions.after)
        check_no_dropout(hf, training=True)  # refused before the first batch
        self.flop_model = FlopModel.of(hf)  # INIT runs before any sharding: the full sizes
        if not is_fsdp(hf):  # INIT runs before Composer's FSDP wrap: copy the unwrapped module
            fsdp2 = isinstance(state.fsdp_config, FSDP2Config) and not is_fsdp2(hf)
            self.teachers.create(hf, sharded=fsdp2)
            if fsdp2 and not any(isinstance(c, TeacherShards) for c in state.callbacks):
                state.callbacks.append(TeacherShards(self.teachers))

    def _start_batch(self, state: State) -> None:
        if self.template is None:
            self._init(state)
        self.batch_index = int(state.timestamp.batch.value)
        self.teachers.ensure(unwrap_hf(state.model), state.batch['input_ids'].device)
        self._global = count_rollouts(state.batch, self.config, self.template, key=(self.seed, self.batch_index))
        self.stats = RLPStats()
        self.thought_log.reset()

    def _microbatch(self, state: State) -> None:
        cfg, batch = self.config, state.batch
        ntp = state.loss['total'] if isinstance(state.loss, dict) else state.loss
        ntp = ntp.mean() if ntp.dim() else ntp
        world, rank = dist.world()
        rlp, stats = rlp_loss(
            state.model,
            self.teachers,
            batch,
            cfg,
            self.template,
            key=(self.seed, self.batch_index),
            global_rollouts=self._global,
            synced=world > 1,
            keep_samples=self.thought_log.due(self.batch_index, rank),
            autocast=lambda: get_precision_context(state.precision, state.precision_config),
            flop_model=self.flop_model,
        )
        self.stats = self.stats + stats
        if stats.samples is not None:
            self.thought_log.collect(self.tokenizer, self.batch_index, batch['input_ids'], stats.samples)
        total = cfg.loss.ntp_weight * ntp + cfg.loss.rlp_weight * rlp
        state.loss = {'total': total, 'ntp': ntp.detach(), 'rlp': rlp.detach()}
        if cfg.loss.ntp_weight == 0:  # the NTP forward ran on a stub (see BEFORE_FORWARD): nothing to report
            del state.loss['ntp']

    def _end_batch(self, state: State, logger: Logger) -> None:
        self.teachers.update(unwrap_hf(state.model))
        self.rank_flops = self.stats.flops
        stats = self.stats.all_reduce()
        self.batch_flops = stats.flops
        self.totals['positions'] += int(stats.positions)
        self.totals['rows_skipped'] += int(stats.rows_skipped)
        self.totals['batches'] += 1
        totals = {f'rlp/{k}_total': float(self.totals[k]) for k in ('positions', 'rows_skipped')}
        logger.log_metrics({**stats.metrics(), **totals, 'rlp/ema_updates': float(self.teachers.updates)})
        self.thought_log.flush()

    def state_dict(self) -> dict[str, Any]:
        """Teacher weights (CPU tensors), counters and the thought tags (read by ``rlp export``); no generators or
        custom classes (safe loader)."""
        written, teacher = self.thought_log.written, self.teachers.state_dict()
        tpl = self.config.template
        tags = {'tags': tpl.tags, 'open_tag': tpl.open_tag, 'close_tag': tpl.close_tag}
        return {'teacher': teacher, 'totals': dict(self.totals), 'thoughts_written': written, 'seed': self.seed,
                'template': tags}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (teacher weights are applied when the teacher copy is created).

        Raises:
            ConfigError: the checkpoint was written with another seed (every RLP draw is keyed on it, so the run
                would not continue the one that wrote the checkpoint).
        """
        saved = state.get('seed')
        if saved is not None and int(saved) != self.seed:
            raise ConfigError(
                f'the checkpoint was written by a run with seed {int(saved)} but this run has seed {self.seed}: '
                f'every RLP position and thought is keyed on the seed, so the resumed run would not continue the one '
                f'that wrote it; set seed: {int(saved)} to resume it (or trainer.load_weights_only: true to start a '
                f'new run from its weights)'
            )
        self.teachers.load_state_dict(state.get('teacher', {}))
        self.totals.update({k: int(v) for k, v in state.get('totals', {}).items()})
        self.thought_log.written = int(state.get('thoughts_written', 0))


def _stub(batch: dict[str, Any]) -> dict[str, Any]:
    """The first two tokens of the first row, labelled with themselves: the cheapest forward Composer can run."""
    stub = {k: (v[:1, :2] if v.dim() == 2 else v[:1]) for k, v in batch.items() if hasattr(v, 'dim')}
    stub['labels'] = stub['input_ids'].clone()
    return stub


class TeacherShards(Callback):
    """Carries the FSDP2 teachers' shards in Composer checkpoints (added by :class:`RLP` at INIT under FSDP2).

    Why a callback: Composer stores the algorithms' states as a list of ``(name, state)`` tuples, which a sharded
    checkpoint (``torch.distributed.checkpoint``) writes as one pickled object from rank 0: rank 0's shards would be
    restored on every rank. Callback states are stored as a mapping, whose DTensors a sharded checkpoint writes and
    reads shard by shard. The state is the teachers' own DTensors, so a sharded load restores them in place.
    """

    def __init__(self, teachers: Teachers) -> None:
        self.teachers = teachers

    def state_dict(self) -> dict[str, Any]:
        return self.teachers.shard_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teachers.load_shard_state(state)
