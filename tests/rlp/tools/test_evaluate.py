"""rlp eval on a tiny Llama saved as a Hugging Face folder and synthetic documents prepared by rlp-data.

Checked: every per-position figure against a reference written here with loops — positions re-chosen by
``select_positions``, thoughts re-sampled token by token with full forwards and no KV cache (inverse CDF on the same
keyed uniforms), no-think and after-thought log-probs from plain forwards of unpadded sequences; the no-think NLL
over all labels by hand; determinism (same seed, same JSON; another seed, other thoughts); answer positions
(``--after =``) all follow ``=``; a baseline equal to the model gives gain_vs_baseline == gain_vs_self and a no-think
difference of 0; the 95% intervals are the bootstrap of the per-position values (whose means are the metrics);
``--paired`` differences against a second model and their intervals; bad input
(missing model, missing data, empty dataset, bad flags) is one line and exit code 2 with nothing written.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlp.bootstrap import bootstrap_intervals
from rlp.config import PositionsConfig, TemplateConfig
from rlp.keys import row_key
from rlp.positions import select_positions
from rlp.rollouts import rollout_uniforms
from rlp.template import resolve_template
from rlp.tools.cli import main
from rlp.tools.evaluate import EvalSettings, _batches, _dataset, evaluate, paired
from tests.helpers.pipeline_data import prepared_synthetic
from tests.helpers.rlp_batches import CLOSE_ID, VOCAB, close_biased
from tests.helpers.tiny_models import build_tiny_model


@pytest.fixture(scope='module')
def prepared(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp('eval')
    prepared_synthetic(root, docs=30, seq_len=64)
    model = close_biased(build_tiny_model('llama', VOCAB, seed=0), CLOSE_ID, 3.0).eval()
    model.save_pretrained(root / 'model')
    tokenizer.save_pretrained(root / 'model')
    return root, model


def _sample_by_loop(model, prompt, u, temperature, close):
    """One thought: full forward over prompt + tokens so far at every step, inverse-CDF on the keyed uniforms; it
    ends when its last tokens are the closing tag's tokens ``close``, or gets them appended at the budget."""
    tokens = []
    for step in range(len(u)):
        logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0, -1].float()
        cdf = torch.softmax(logits / temperature, -1).cumsum(-1)
        tok = int(torch.searchsorted(cdf, (u[step] * cdf[-1]).view(1), right=True).clamp(max=len(cdf) - 1))
        tokens.append(tok)
        if tokens[-len(close) :] == close:
            return tokens, False
    return tokens + close, True


def _logp_last(model, seq, target):
    logits = model(input_ids=torch.tensor([seq])).logits[0, -1].float()
    logp = torch.log_softmax(logits, -1)
    return float(logp[target]), int(logp.argmax()) == target


@torch.no_grad()
@pytest.mark.parametrize('text_tags', [None, (' Hmm,', ' so)')])
def test_figures_match_a_loop_reference(prepared, tokenizer, text_tags):
    """Every figure of ``evaluate`` against loops of full forwards written here, with the <think> tokens and with
    tags written as text (``--text-tags``: 5 opening and 2 closing tokens, no-think logit before the opening string)."""
    root, model = prepared
    s = EvalSettings(positions=5, group_size=2, seed=3, max_thought_tokens=4, temperature=0.9, samples=6, batch_size=4,
                     text_tags=text_tags)  # fmt: skip
    result = evaluate(model, tokenizer, str(root / 'data'), s)
    got = result['metrics']

    tags = TemplateConfig() if text_tags is None else TemplateConfig(tags='text', open_tag=text_tags[0],
                                                                        close_tag=text_tags[1])  # fmt: skip
    template = resolve_template(tokenizer, tags)
    pad = tokenizer.pad_token_id
    ds = _dataset(str(root / 'data'), 512, tokenizer.eos_token_id)
    cfg = PositionsConfig(k=1, min_context=s.min_context, max_context=s.max_context)
    nothink, think, acc0, acc, lengths, trunc = [], [], [], [], [], []
    nll = count = 0.0
    for batch in _batches(ds, pad, s.batch_size, s.samples):
        for r in range(batch['input_ids'].shape[0]):
            ids = batch['input_ids'][r][batch['attention_mask'][r].bool()].tolist()
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            nll -= float(sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1)))
            count += len(ids) - 1
    for index, batch in enumerate(_batches(ds, pad, s.batch_size, len(ds))):
        keys = row_key(batch['sample_id'], batch['input_ids'])
        pos = select_positions(batch['input_ids'], batch['segment_ids'], keys, cfg, template.excluded_targets,
                               seed=s.seed, batch_index=index, attention_mask=batch['attention_mask'])  # fmt: skip
        for r, st, t in zip(pos.row.tolist(), pos.start.tolist(), pos.target.tolist()):
            if len(nothink) == s.positions:
                break
            prefix, target = batch['input_ids'][r, st:t].tolist(), int(batch['input_ids'][r, t])
            lp, ok = _logp_last(model, prefix, target)
            nothink.append(lp)
            acc0.append(ok)
            u = rollout_uniforms([(s.seed, index, int(batch['sample_id'][r]), t)], s.group_size, s.max_thought_tokens)
            for g in range(s.group_size):
                prompt, close = [*prefix, *template.open_ids], list(template.close_ids)
                thought, cut = _sample_by_loop(model, prompt, u[0, g], s.temperature, close)
                lp, ok = _logp_last(model, [*prefix, *template.open_ids, *thought], target)
                think.append(lp - nothink[-1])
                acc.append(ok)
                lengths.append(len(thought))
                trunc.append(cut)
    assert got['positions'] == s.positions == len(nothink)
    assert got['ntp_nll'] == pytest.approx(nll / count, abs=1e-4)
    assert got['nll_nothink'] == pytest.approx(-sum(nothink) / len(nothink), abs=1e-4)
    assert got['gain_vs_self'] == pytest.approx(sum(think) / len(think), abs=1e-4)
    assert got['gain_vs_baseline'] == pytest.approx(got['gain_vs_self'], abs=1e-6)  # no baseline: the model itself
    assert got['acc_nothink'] == pytest.approx(sum(acc0) / len(acc0))
    assert got['acc_think'] == pytest.approx(sum(acc) / len(acc))
    assert got['thought_len_mean'] == pytest.approx(sum(lengths) / len(lengths))
    assert got['truncation_rate'] == pytest.approx(sum(trunc) / len(trunc))
    gains = torch.tensor(think).view(-1, s.group_size)
    assert got['best_of_g_helps'] == pytest.approx(float((gains.max(1).values > 0).float().mean()))
    assert got['nll_think_mix'] == pytest.approx(
        float(-(torch.logsumexp(gains + torch.tensor(nothink).unsqueeze(1), 1) - math.log(s.group_size)).mean()),
        abs=1e-4,
    )
    per_pos = result['per_position']  # the values the intervals resample: their means are the metrics
    assert per_pos['gain_vs_self'] == pytest.approx(gains.mean(1).tolist(), abs=1e-4)
    assert per_pos['nll_nothink'] == pytest.approx([-x for x in nothink], abs=1e-4)
    for key, values in per_pos.items():
        lo, hi = result['intervals'][key]
        want = bootstrap_intervals(torch.tensor(values), resamples=s.resamples, seed=s.seed)[0].tolist()
        assert [lo, hi] == pytest.approx(want, abs=1e-9), key
        assert lo - 1e-9 <= got[key] <= hi + 1e-9, key


def test_cli_is_deterministic_and_after_selects_answers(prepared, tmp_path, capsys):
    root, _ = prepared
    base = ['eval', '--model', str(root / 'model'), '--data', str(root / 'data'), '--positions', '6']
    base += ['--group-size', '2', '--max-thought-tokens', '3', '--samples', '4']
    outs = []
    for seed, name in ((0, 'a'), (0, 'b'), (1, 'c')):
        assert main(base + ['--seed', str(seed), '--json', str(tmp_path / f'{name}.json')]) == 0
        outs.append(json.loads((tmp_path / f'{name}.json').read_text())['metrics'])
    assert outs[0] == outs[1] and outs[0] != outs[2]
    assert 'gain_vs_self' in capsys.readouterr().out
    assert main(base + ['--after', '=', '--baseline', str(root / 'model'), '--json', str(tmp_path / 'd.json')]) == 0
    answers = json.loads((tmp_path / 'd.json').read_text())
    assert answers['settings']['after'] == ['='] and answers['metrics']['positions'] == 6
    assert answers['metrics']['gain_vs_baseline'] == pytest.approx(answers['metrics']['gain_vs_self'], abs=1e-5)
    assert answers['vs_baseline']['metrics']['nll_nothink'] == pytest.approx(0.0, abs=1e-6)  # the model itself
    assert answers['vs_baseline']['intervals']['nll_nothink'] == pytest.approx([0.0, 0.0], abs=1e-6)


def test_paired_difference_of_two_models(prepared, tokenizer, tmp_path, capsys):
    """--paired: a second model (other weights) evaluated with the same settings; each difference equals the
    difference of the two files' metrics, its interval the bootstrap of the per-position differences, the model
    against itself gives 0 [0, 0], and an evaluation at other positions is refused in one line."""
    root, _ = prepared
    other = close_biased(build_tiny_model('llama', VOCAB, seed=1), CLOSE_ID, 3.0).eval()
    other.save_pretrained(tmp_path / 'other')
    tokenizer.save_pretrained(tmp_path / 'other')
    base = ['eval', '--data', str(root / 'data'), '--positions', '6', '--group-size', '2', '--max-thought-tokens', '3',
            '--samples', '2', '--resamples', '300']  # fmt: skip
    assert main(base + ['--model', str(tmp_path / 'other'), '--json', str(tmp_path / 'b.json')]) == 0
    b = json.loads((tmp_path / 'b.json').read_text())
    assert main(base + ['--model', str(root / 'model'), '--paired', str(tmp_path / 'b.json'),
                        '--json', str(tmp_path / 'a.json')]) == 0  # fmt: skip
    a = json.loads((tmp_path / 'a.json').read_text())
    assert 'difference, minus' in capsys.readouterr().out
    for key, value in a['paired']['metrics'].items():
        assert value == pytest.approx(a['metrics'][key] - b['metrics'][key], abs=1e-6), key
        diff = torch.tensor(a['per_position'][key], dtype=torch.float64) - torch.tensor(b['per_position'][key])
        assert a['paired']['intervals'][key] == pytest.approx(
            bootstrap_intervals(diff, resamples=300, seed=0)[0].tolist(), abs=1e-9
        )
    assert any(a['paired']['metrics'][k] != 0 for k in a['paired']['metrics'])
    self_pair = paired(a, a)
    assert all(v == 0 and self_pair['intervals'][k] == [0.0, 0.0] for k, v in self_pair['metrics'].items())
    assert main(base + ['--model', str(root / 'model'), '--seed', '2', '--paired', str(tmp_path / 'b.json')]) == 2
    err = capsys.readouterr().err.strip()
    assert 'same positions' in err and '\n' not in err


def test_answer_positions_follow_the_marker(prepared, tokenizer):
    root, model = prepared
    template = resolve_template(tokenizer, TemplateConfig(), model, ['='])
    eq = tokenizer('=', add_special_tokens=False)['input_ids']
    ds = _dataset(str(root / 'data'), 512, tokenizer.eos_token_id)
    cfg = PositionsConfig(strategy='after', after=['='], k=1, min_context=8)
    seen = 0
    for index, batch in enumerate(_batches(ds, tokenizer.pad_token_id, 8, len(ds))):
        keys = row_key(batch['sample_id'], batch['input_ids'])
        pos = select_positions(batch['input_ids'], batch['segment_ids'], keys, cfg, template.excluded_targets,
                               seed=0, batch_index=index, after_ids=template.after_ids)  # fmt: skip
        for r, t in zip(pos.row.tolist(), pos.target.tolist()):
            assert batch['input_ids'][r, t - len(eq) : t].tolist() == eq
            seen += 1
    assert seen > 5


@pytest.mark.parametrize(
    'flags, message',
    [
        (['--model', 'missing-model'], 'missing-model'),
        (['--data', 'missing-data'], 'no index.json'),
        (['--group-size', '1'], '--group-size 1'),
        (['--positions', '0'], '--positions 0'),
        (['--after', 'zzqqxx-never'], 'no eligible position'),
    ],
)
def test_bad_input_is_one_line(prepared, tmp_path, capsys, flags, message):
    root, _ = prepared
    args = {'--model': str(root / 'model'), '--data': str(root / 'data'), '--json': str(tmp_path / 'out.json')}
    extra = []
    for i in range(0, len(flags), 2):
        if flags[i] in args and flags[i] != '--after':
            args[flags[i]] = flags[i + 1]
        else:
            extra += flags[i : i + 2]
    argv = ['eval', '--samples', '2', '--positions', '3'] + [x for kv in args.items() for x in kv] + extra
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and '\n' not in err
    assert not (tmp_path / 'out.json').exists()


def test_data_manifest_and_tokenizer_are_checked(prepared, tmp_path, capsys):
    """rlp eval compares --data's manifest.json with the model: a copy of the data whose manifest names another
    tokenizer (its hash changed), and one whose seq_len exceeds the model's max_position_embeddings, are refused in
    one line naming the data, both values and the fix; a model folder without a tokenizer gives one short line that
    names --tokenizer, and --tokenizer bundled then evaluates. Nothing is written."""
    import shutil

    root, model = prepared
    base = ['eval', '--samples', '2', '--positions', '2', '--group-size', '2', '--json', str(tmp_path / 'out.json')]
    for name, old, new, want in (
        ('other-tok', '"hash": "xxh64:', '"hash": "xxh64:0', 'was prepared with tokenizer'),
        ('long', '"seq_len": 64', '"seq_len": 100000', 'samples of up to 100000 tokens'),
    ):
        shutil.copytree(root / 'data', tmp_path / name)
        manifest = tmp_path / name / 'manifest.json'
        text = manifest.read_text()
        assert old in text
        manifest.write_text(text.replace(old, new, 1))
        assert main([*base, '--model', str(root / 'model'), '--data', str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert want in err and str(tmp_path / name) in err and 'fix:' in err and '\n' not in err, err
    bare = tmp_path / 'bare'
    model.save_pretrained(bare)
    capsys.readouterr()  # transformers 5's "Writing model shards" bar of the line above
    assert main([*base, '--model', str(bare), '--data', str(root / 'data')]) == 2
    err = capsys.readouterr().err.strip()
    assert '--tokenizer' in err and '\n' not in err and len(err) < 400, err
    assert not (tmp_path / 'out.json').exists()
    assert main([*base, '--model', str(bare), '--data', str(root / 'data'), '--tokenizer', 'bundled']) == 0
    assert (tmp_path / 'out.json').exists()
