"""``rlp eval``: does thinking help this model on this data? No-think NLL, and information gain at chosen positions.

For a model (a Hugging Face folder, or a Composer checkpoint / save folder, exported on the fly) and an MDS dataset
(a folder or an object-store URI written by ``rlp-data prepare``):

1. **No-think NLL / perplexity** over every next-token label of the first ``--samples`` samples.
2. **Positions** chosen as in training (:func:`rlp.step.choose_positions`, keyed on ``--seed`` and the sample ids;
   ``--after TEXT`` selects answer spans, as ``positions.strategy: after`` does), the first ``--positions`` of them.
   At each, ``--group-size`` G thoughts are sampled with the training sampler (keyed, temperature ``--temperature``,
   at most ``--max-thought-tokens``), then scored by a plain forward of ``prompt + thought`` (right-aligned):

   - ``nll_nothink`` = −log p(x_t | prefix); ``acc_nothink``: argmax = x_t;
   - ``nll_think_mean`` = −mean_g log p(x_t | prefix, c_g); ``nll_think_mix`` = −log mean_g p(x_t | prefix, c_g);
     ``acc_think``: the share of (position, thought) whose argmax after the thought is x_t;
   - ``gain_vs_self`` = mean of log p(x_t | prefix, c_g) − log p(x_t | prefix), both from this model (with its
     10/50/90th percentiles over positions), and ``gain_vs_baseline`` with the no-think log-prob of
     ``--baseline`` instead (e.g. the starting checkpoint);
   - ``best_of_g_helps``: the share of positions where the best of the G thoughts beats no-think;
   - ``thought_len_mean`` (closing tag included) and ``truncation_rate``.

3. **95% intervals** for every per-position metric: a percentile bootstrap over the positions, seeded with ``--seed``
   (:mod:`rlp.bootstrap`, ``--resamples`` draws). With ``--baseline`` also the no-think NLL minus the baseline's at
   the same positions, and with ``--paired OTHER.json`` (another model evaluated with the same settings) every
   metric minus the other model's, position by position, each with the interval of the difference: two models
   differ beyond noise on a metric only where that interval excludes 0.

Everything is a pure function of (model, data, settings, seed): the same command prints the same numbers. A table
goes to the console; ``--json OUT`` writes the same numbers: ``{"model", "baseline", "data", "settings", "metrics",
"intervals", "positions_keys", "per_position"}`` (plus ``"vs_baseline"`` and ``"paired"``, each ``{"metrics",
"intervals"}``), where ``positions_keys`` are the (sample id, target index) pairs and ``per_position`` the values
whose means are the metrics.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from rlp.bootstrap import DEFAULT_RESAMPLES, bootstrap_intervals
from rlp.config import PositionsConfig, TemplateConfig
from rlp.hf import eval_mode
from rlp.logprobs import last_logits
from rlp.rollouts import build_prompts, rollout_uniforms, sample_thoughts
from rlp.scoring import nothink_logprob
from rlp.step import choose_positions, pad_id
from rlp.template import resolve_template
from rlp.tools import export
from rlp.tools.cli import CliError

__all__ = ['EvalSettings', 'METRIC_ORDER', 'add_parser', 'evaluate', 'intervals', 'paired', 'per_position', 'run']

METRIC_ORDER = ('ntp_nll', 'ntp_perplexity', 'positions', 'nll_nothink', 'nll_think_mean', 'nll_think_mix',
                'acc_nothink', 'acc_think', 'gain_vs_self', 'gain_vs_self_p10', 'gain_vs_self_p50', 'gain_vs_self_p90',
                'gain_vs_baseline', 'best_of_g_helps', 'thought_len_mean', 'truncation_rate')  # fmt: skip

# streaming and the run layer's data module (which loads it) are imported inside the functions that read data:
# ``rlp --help`` imports every subcommand module to build its parser, and should not wait for them.


@dataclass
class EvalSettings:
    """What ``rlp eval`` measures (the command-line flags)."""

    positions: int = 256
    group_size: int = 8
    seed: int = 0
    max_thought_tokens: int = 24
    temperature: float = 0.7
    samples: int = 256
    batch_size: int = 8
    min_context: int = 8
    max_context: Optional[int] = 2048
    after: tuple[str, ...] = ()
    resamples: int = DEFAULT_RESAMPLES
    text_tags: Optional[tuple[str, str]] = None  # (open, close) written as plain text; None = <think> </think> tokens


def _cli_error(message: str) -> Exception:
    return CliError(message)


def load_model(path: str, tokenizer: Optional[str] = None, gguf_file: Optional[str] = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a Hugging Face folder (or a GGUF file ``gguf_file`` in it), or a Composer
    checkpoint (file, folder or save folder, local or object store) exported to a temporary Hugging Face folder
    first."""
    if gguf_file is not None:
        from rlp.run.models import gguf_kwargs
        from rlp.strictcfg import ConfigError

        if not os.path.isdir(path):
            raise _cli_error(f'--gguf-file {gguf_file!r}: {path!r} is not a folder; give the folder that holds it')
        try:
            weights = gguf_kwargs('--gguf-file', path, gguf_file, weights=True)
        except ConfigError as err:
            raise _cli_error(str(err)) from None
        return _load_folder(path, path, tokenizer, weights)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, 'config.json')):
        return _load_folder(path, path, tokenizer)
    with tempfile.TemporaryDirectory(prefix='rlp-eval-') as tmp:
        export.export_checkpoint(path, os.path.join(tmp, 'model'), tokenizer=tokenizer)
        return _load_folder(path, os.path.join(tmp, 'model'), None)


def _load_folder(path: str, folder: str, tokenizer: Optional[str], gguf: Optional[dict] = None) -> tuple[Any, Any]:
    # transformers 5 draws a per-tensor "Loading weights" bar on stderr, which this command keeps for its own
    # progress and its one-line errors
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **(gguf or {}))
    except (OSError, ValueError) as err:
        message = f'{path}: cannot load a model ({_short(err)}); give a folder written by rlp export, or a checkpoint'
        raise _cli_error(message) from err
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if tokenizer == 'bundled':
        from pipeline.bundled_tokenizer import bundled_tokenizer_dir

        tokenizer = str(bundled_tokenizer_dir())
    try:
        own = {'gguf_file': gguf['gguf_file']} if gguf and not tokenizer else {}
        tok = AutoTokenizer.from_pretrained(tokenizer or folder, **own)
    except (OSError, ValueError, TypeError) as err:
        where = f'--tokenizer {tokenizer!r}' if tokenizer else f'{path} holds no tokenizer'
        raise _cli_error(
            f'{where} ({_short(err)}); fix: pass --tokenizer NAME_OR_DIR, the tokenizer the model was trained with '
            f'(e.g. --tokenizer bundled)'
        ) from err
    return model.eval(), tok


def _short(err: BaseException, limit: int = 160) -> str:
    text = ' '.join(str(err).split())
    return f'{type(err).__name__}: {text[: limit - 3] + "..." if len(text) > limit else text}'


def check_data_manifest(data: str, tokenizer: Any, max_len: int) -> None:
    """Refuse ``--data`` whose ``manifest.json`` names another tokenizer than the model's, or samples longer than the
    model's ``max_position_embeddings`` (they would be cut); data without a manifest (llm-foundry's) is not checked."""
    from pipeline.tokenize.tokenizer import tokenizer_hash
    from rlp.run.integrity import read_manifest
    from rlp.run.recipe_schema import ConfigError

    try:
        manifest = read_manifest('--data', data)
    except ConfigError as err:
        raise _cli_error(f'--data {data}: cannot read its manifest.json ({_short(err)})') from None
    if manifest is None:
        return
    theirs = manifest.get('tokenizer') or {}
    mine = (len(tokenizer), tokenizer_hash(tokenizer))
    if (theirs.get('vocab_size'), theirs.get('hash')) != mine:
        raise _cli_error(
            f'--data {data} was prepared with tokenizer {theirs.get("name")!r} ({theirs.get("vocab_size")} tokens, '
            f'{theirs.get("hash")}) but the model\'s tokenizer has {mine[0]} tokens ({mine[1]}); token ids mean '
            f'different things under the two; fix: pass --tokenizer with the data\'s tokenizer, or prepare the data '
            f'again with the model\'s tokenizer'
        )
    seq_len = manifest.get('seq_len')
    if isinstance(seq_len, int) and seq_len > max_len:
        raise _cli_error(
            f'--data {data} holds samples of up to {seq_len} tokens (seq_len) but the model takes at most {max_len} '
            f'positions (max_position_embeddings): each would be cut; fix: prepare the data again with --seq-len '
            f'{max_len} or less'
        )


def _dataset(data: str, seq_len: int, eos_id: Optional[int]) -> Any:
    from streaming import Stream

    from rlp.run.data import TokenSampleDataset

    remote = '://' in data
    if not remote and not os.path.isfile(os.path.join(data, 'index.json')):
        raise _cli_error(f'--data {data}: no index.json there; give a folder or URI written by rlp-data prepare')
    stream = Stream(remote=data, local=tempfile.mkdtemp(prefix='rlp-eval-data-')) if remote else Stream(local=data)
    try:
        ds = TokenSampleDataset(
            streams=[stream], token_dtypes=[None], seq_len=seq_len, eos_token_id=eos_id, shuffle=False, batch_size=1
        )
    except Exception as err:  # streaming raises many kinds for an unreadable index
        raise _cli_error(f'--data {data}: cannot read the dataset ({type(err).__name__}: {err})') from err
    if len(ds) == 0:
        raise _cli_error(f'--data {data}: the dataset holds no samples')
    return ds


def _batches(ds: Any, pad: int, batch_size: int, limit: int):
    """Batches of the batch contract over the first ``limit`` samples, in order, padded to their longest sample."""
    from rlp.run.data import collate_samples

    n = min(len(ds), limit)
    for start in range(0, n, batch_size):
        samples = [ds[i] for i in range(start, min(start + batch_size, n))]
        yield collate_samples(samples, max(len(x['tokens']) for x in samples), pad)


@torch.no_grad()
def _ntp_nll(model: Any, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
    """(sum of -log p over next-token labels, their count) of one batch."""
    logits = model(input_ids=batch['input_ids'], attention_mask=batch['attention_mask']).logits.float()
    labels = batch['labels'][:, 1:]
    logp = torch.log_softmax(logits[:, :-1], -1)
    keep = labels != -100
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return float(-(picked[keep]).sum()), int(keep.sum())


@torch.no_grad()
def _after_thought(model: Any, prompts: Any, ro: Any, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, G) fp32 logits' log p(x_t) and argmax after ``prompt thought``, from a plain right-aligned forward."""
    p, g, _ = ro.tokens.shape
    seqs = []
    for i in range(p):
        prompt = prompts.ids[i][prompts.mask[i].bool()].tolist()
        for j in range(g):
            seqs.append(prompt + ro.tokens[i, j, : int(ro.lengths[i, j])].tolist())
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for k, s in enumerate(seqs):
        ids[k, width - len(s) :] = torch.tensor(s)
        mask[k, width - len(s) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    _, logits = last_logits(model, 1, input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    logp = torch.log_softmax(logits[:, 0], -1)
    target = prompts.target.repeat_interleave(g)
    return logp.gather(-1, target.view(-1, 1)).view(p, g), (logp.argmax(-1) == target).view(p, g)


def evaluate(model: Any, tokenizer: Any, data: str, settings: EvalSettings, baseline: Any = None) -> dict[str, Any]:
    """The metrics of the module docstring for ``model`` on ``data`` (``baseline`` optional)."""
    tags = TemplateConfig()
    if settings.text_tags is not None:
        tags = TemplateConfig(open_tag=settings.text_tags[0], close_tag=settings.text_tags[1], tags='text')
    template = resolve_template(tokenizer, tags, model, settings.after)
    pad = pad_id(template)
    max_len = int(getattr(model.config, 'max_position_embeddings', 2048) or 2048)
    check_data_manifest(data, tokenizer, max_len)
    ds = _dataset(data, max_len, tokenizer.eos_token_id)
    cfg = PositionsConfig(
        strategy='after' if settings.after else 'uniform',
        after=list(settings.after),
        unit='document',
        k=1,
        min_context=settings.min_context,
        max_context=settings.max_context,
    )
    nll = count = 0.0
    for batch in _batches(ds, pad, settings.batch_size, settings.samples):
        s, n = _ntp_nll(model, batch)
        nll, count = nll + s, count + n
    names = ('nothink', 'base', 'acc0', 'think', 'acc', 'len', 'trunc', 'sample', 'target')
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in names}
    done = 0
    bar = tqdm(total=settings.positions, desc='rlp eval: positions', unit='pos', disable=None)
    for index, batch in enumerate(_batches(ds, pad, settings.batch_size, len(ds))):
        if done >= settings.positions:
            break
        pos = choose_positions(batch, cfg, template, key=(settings.seed, index))
        keep = min(len(pos), settings.positions - done)
        if keep == 0:
            continue
        pos.row, pos.target, pos.start = pos.row[:keep], pos.target[:keep], pos.start[:keep]
        prompts = build_prompts(batch['input_ids'], pos, template, pad)
        keys = [(settings.seed, index, int(batch['sample_id'][r]), int(t)) for r, t in zip(pos.row, pos.target)]
        u = rollout_uniforms(keys, settings.group_size, settings.max_thought_tokens)
        ro = sample_thoughts(model, prompts, u, temperature=settings.temperature, top_p=1.0,
                             close_ids=template.close_ids, pad_id=pad)  # fmt: skip
        with eval_mode(model):
            _, last = last_logits(model, prompts.open_len + 1, input_ids=prompts.ids, attention_mask=prompts.mask,
                                  position_ids=(prompts.mask.cumsum(-1) - 1).clamp(min=0), use_cache=False)  # fmt: skip
            logp0 = torch.log_softmax(last[:, 0], -1)
            think, acc = _after_thought(model, prompts, ro, pad)
        rows['nothink'].append(logp0.gather(-1, prompts.target.view(-1, 1)).squeeze(-1))
        rows['acc0'].append((logp0.argmax(-1) == prompts.target).float())
        rows['base'].append(nothink_logprob(baseline, prompts) if baseline is not None else rows['nothink'][-1])
        rows['think'].append(think)
        rows['acc'].append(acc.float())
        rows['len'].append(ro.lengths.float())
        rows['trunc'].append(ro.truncated.float())
        rows['sample'].append(torch.tensor([k[2] for k in keys], dtype=torch.long))
        rows['target'].append(pos.target.clone())
        done += keep
        bar.update(keep)
    bar.close()
    if done == 0:
        raise _cli_error(
            f'--data {data}: no eligible position in {len(ds)} samples; lower --min-context or check --after'
        )
    cat = {k: torch.cat(v) for k, v in rows.items()}
    gain = cat['think'] - cat['nothink'].unsqueeze(1)  # (P, G)
    per_pos = per_position(cat)
    q = torch.quantile(gain.mean(1).double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    metrics = {
        'ntp_nll': nll / max(count, 1.0),
        'ntp_perplexity': math.exp(nll / max(count, 1.0)),
        'positions': float(done),
        **{k: float(v.double().mean()) for k, v in per_pos.items()},
        'gain_vs_self_p10': q[0],
        'gain_vs_self_p50': q[1],
        'gain_vs_self_p90': q[2],
    }
    metrics = {k: metrics[k] for k in METRIC_ORDER if k in metrics}
    out = {
        'data': data,
        'settings': asdict(settings),
        'metrics': metrics,
        'intervals': intervals(per_pos, settings),
        'positions_keys': [[int(a), int(b)] for a, b in zip(cat['sample'].tolist(), cat['target'].tolist())],
        'per_position': {k: v.tolist() for k, v in per_pos.items()},
    }
    if baseline is not None:  # the no-think NLL against the baseline model's, paired at each position
        diff = {'nll_nothink': per_pos['nll_nothink'] + cat['base']}
        out['vs_baseline'] = {
            'metrics': {k: float(v.double().mean()) for k, v in diff.items()},
            'intervals': intervals(diff, settings),
        }
    return out


def per_position(cat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each bootstrapped metric as a (P,) per-position value whose mean over positions is the metric."""
    think, nothink, base = cat['think'], cat['nothink'], cat['base']  # (P, G), (P,), (P,)
    gain = think - nothink.unsqueeze(1)
    mix = torch.logsumexp(think, 1) - math.log(think.shape[1])
    return {
        'nll_nothink': -nothink,
        'nll_think_mean': -think.mean(1),
        'nll_think_mix': -mix,
        'acc_nothink': cat['acc0'],
        'acc_think': cat['acc'].mean(1),
        'gain_vs_self': gain.mean(1),
        'gain_vs_baseline': (think - base.unsqueeze(1)).mean(1),
        'best_of_g_helps': (gain.max(1).values > 0).float(),
        'thought_len_mean': cat['len'].mean(1),
        'truncation_rate': cat['trunc'].mean(1),
    }


def intervals(per_pos: dict[str, torch.Tensor], settings: EvalSettings) -> dict[str, list[float]]:
    """``{metric: [low, high]}``: the 95% bootstrap interval over positions (:mod:`rlp.bootstrap`), seeded."""
    names = list(per_pos)
    ci = bootstrap_intervals(torch.stack([per_pos[k] for k in names], 1), resamples=settings.resamples,
                             seed=settings.seed)  # fmt: skip
    return {k: [float(ci[i, 0]), float(ci[i, 1])] for i, k in enumerate(names)}


def paired(results: dict[str, Any], other: dict[str, Any], resamples: Optional[int] = None) -> dict[str, Any]:
    """The difference ``results - other`` of every per-position metric both hold, with its 95% interval.

    Both must come from ``rlp eval --json`` on the same data, positions and seed (the position keys must match):
    the difference at each position is then paired, and its bootstrap uses the same seed.
    """
    if results.get('positions_keys') != other.get('positions_keys'):
        raise _cli_error(
            'the two evaluations were not made at the same positions (data, --seed, --positions and --after must '
            'match); evaluate both with the same settings'
        )
    names = [k for k in results['per_position'] if k in other['per_position']]
    diff = {
        k: torch.tensor(results['per_position'][k], dtype=torch.float64)
        - torch.tensor(other['per_position'][k], dtype=torch.float64)
        for k in names
    }
    settings = EvalSettings(**{**other['settings'], 'after': tuple(other['settings'].get('after', ()))})
    if resamples is not None:
        settings.resamples = resamples
    return {
        'against': other.get('model'),
        'metrics': {k: float(v.mean()) for k, v in diff.items()},
        'intervals': intervals(diff, settings),
    }


def format_table(results: dict[str, Any]) -> str:
    """The console table of one evaluation."""
    lines = [f'rlp eval: {results.get("model")} on {results["data"]}' + (
        f' (baseline {results["baseline"]})' if results.get('baseline') else '')]  # fmt: skip
    ci = results.get('intervals', {})
    for key, value in results['metrics'].items():
        band = f'   95% [{ci[key][0]: .4f}, {ci[key][1]: .4f}]' if key in ci else ''
        lines.append(f'  {key:22s} {value: .4f}{band}')
    for title, section in (('minus the baseline', results.get('vs_baseline')), ('paired', results.get('paired'))):
        if section:
            label = f'minus {section["against"]}' if title == 'paired' else title
            lines.append(f'  difference, {label} (same positions; 95% interval):')
            for key, value in section['metrics'].items():
                lo, hi = section['intervals'][key]
                lines.append(f'    {key:20s} {value: .4f}   [{lo: .4f}, {hi: .4f}]')
    return '\n'.join(lines)


def _read_eval(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding='utf-8') as fh:
            data = json.load(fh)
    except (OSError, ValueError) as err:
        raise _cli_error(f'--paired {path}: cannot read it ({err}); give a file written by rlp eval --json') from err
    if not isinstance(data, dict) or 'per_position' not in data or 'positions_keys' not in data:
        raise _cli_error(f'--paired {path}: no per-position values; give a file written by this rlp eval --json')
    return data


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        'eval',
        help='no-think NLL and information gain of thoughts for a model on held-out data',
        description=__doc__.split('\n\n')[0],
        epilog='example: rlp eval --model hf/rlp --data demo/heldout --baseline hf/base --after = --json eval.json',
    )
    p.add_argument('--model', required=True, help='Hugging Face folder, Composer checkpoint or save folder')
    p.add_argument('--data', required=True, help='MDS folder or URI written by rlp-data prepare')
    p.add_argument('--baseline', help='a second model whose no-think log-prob is the gain baseline')
    p.add_argument('--tokenizer', help='tokenizer folder (or bundled), for models that do not carry one')
    p.add_argument('--gguf-file', metavar='NAME',
                   help="load --model (and its tokenizer) from this GGUF file inside the --model folder; needs "
                        "pip install -e '.[gguf]'")  # fmt: skip
    p.add_argument('--positions', type=int, default=256, help='positions to evaluate (default: %(default)s)')
    p.add_argument('--group-size', type=int, default=8, help='thoughts per position (default: %(default)s)')
    p.add_argument('--seed', type=int, default=0, help='seed of positions and thoughts (default: %(default)s)')
    p.add_argument('--max-thought-tokens', type=int, default=24, help='thought budget (default: %(default)s)')
    p.add_argument('--temperature', type=float, default=0.7, help='sampling temperature (default: %(default)s)')
    p.add_argument('--samples', type=int, default=256, help='samples for the no-think NLL (default: %(default)s)')
    p.add_argument('--min-context', type=int, default=8, help='prefix tokens a position needs (default: %(default)s)')
    p.add_argument('--after', action='append', default=[], metavar='TEXT',
                   help='only positions right after TEXT (repeatable), e.g. --after = for answers')  # fmt: skip
    p.add_argument('--text-tags', nargs=2, metavar=('OPEN', 'CLOSE'),
                   help='think tags written as plain text (a run with rlp.template.tags: text); default: the '
                        '<think> </think> tokens')  # fmt: skip
    p.add_argument('--resamples', type=int, default=DEFAULT_RESAMPLES,
                   help='bootstrap resamples of positions for the 95%% intervals (default: %(default)s)')  # fmt: skip
    p.add_argument('--paired', metavar='EVAL_JSON',
                   help='another model evaluated with the same settings (rlp eval --json): also report this model '
                        'minus that one at the same positions, with the interval of the difference')  # fmt: skip
    p.add_argument('--json', help='also write the results as JSON to this file')


def run(args: Any) -> int:
    for name in ('positions', 'group_size', 'max_thought_tokens', 'samples', 'min_context', 'resamples'):
        if getattr(args, name) < 1:
            raise _cli_error(f'--{name.replace("_", "-")} {getattr(args, name)}: must be >= 1')
    if args.group_size < 2:
        raise _cli_error(f'--group-size {args.group_size}: must be >= 2')
    if args.temperature <= 0:
        raise _cli_error(f'--temperature {args.temperature}: must be > 0')
    settings = EvalSettings(
        positions=args.positions,
        group_size=args.group_size,
        seed=args.seed,
        max_thought_tokens=args.max_thought_tokens,
        temperature=args.temperature,
        samples=args.samples,
        min_context=args.min_context,
        after=tuple(args.after),
        resamples=args.resamples,
        text_tags=tuple(args.text_tags) if args.text_tags else None,
    )
    other = _read_eval(args.paired) if args.paired else None
    model, tokenizer = load_model(args.model, args.tokenizer, args.gguf_file)
    baseline = load_model(args.baseline, args.tokenizer)[0] if args.baseline else None
    results = {
        'model': args.model,
        'baseline': args.baseline,
        **evaluate(model, tokenizer, args.data, settings, baseline),
    }
    if other is not None:
        results['paired'] = paired(results, other)
    print(format_table(results))
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(folder, exist_ok=True)
        tmp = args.json + '.tmp'
        with open(tmp, 'w', encoding='utf-8') as fh:
            json.dump(results, fh, indent=2)
        os.replace(tmp, args.json)
        print(f'  json: {os.path.abspath(args.json)}')
    return 0
