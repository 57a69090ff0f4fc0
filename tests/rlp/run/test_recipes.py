"""Checks every recipe in `recipes/` against the schema without loading any weights (each parses, validates for
the world sizes it is meant for, and names a model and tokenizer), the paper settings of the paper recipe against
the values the paper reports, that each variant built on a base recipe (`base:`) differs from its base in exactly
the keys it declares, and that the CPU smoke recipe really trains a few batches on the bundled corpus prepared with
`pipeline.prepare` (RLP mixed with NTP, thoughts JSONL and summary produced)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rlp.run.metrics import read_metrics
from rlp.run.recipe import load_recipe
from rlp.run.recipe_schema import recipe_to_dict, validate_for_world
from tests.helpers.training import REPO, launch

RECIPES = sorted((REPO / 'recipes').glob('*.yaml'))


def test_expected_recipes_exist():
    """The recipes the project documents are all there."""
    names = {p.name for p in RECIPES}
    assert {
        'smoke-cpu.yaml',
        'qwen3-1.7b-rlp.yaml',
        'qwen3-1.7b-rlp-ntp.yaml',
        'cpt-baseline.yaml',
        'nemotron-nano-12b-rlp.yaml',
        'qwen3-1.7b-rlp-mixture.yaml',
        'qwen3-1.7b-rpt.yaml',
        'qwen3-1.7b-horizon.yaml',
        'demo-rpt.yaml',
        'demo-horizon.yaml',
        'smollm2-135m-rlp.yaml',
        'smollm2-135m-rlp-ntp.yaml',
        'smollm2-135m-cpt.yaml',
    } <= names


@pytest.mark.parametrize('path', RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_validates(path: Path):
    """Parses into typed config; the global batch divides for the launch sizes the recipe targets."""
    recipe = load_recipe(path)
    sizes = (1, 2) if recipe.trainer.device == 'cpu' else (8, 16, 32, 64)
    for world in sizes:
        assert validate_for_world(recipe, world) * world == recipe.trainer.global_train_batch_size
    assert recipe.model.name_or_path or recipe.model.config


def test_paper_recipe_matches_paper():
    """qwen3-1.7b-rlp.yaml carries the paper's settings (arXiv 2510.01265 App. 10)."""
    r = load_recipe(REPO / 'recipes' / 'qwen3-1.7b-rlp.yaml')
    assert (r.rlp.rollouts.group_size, r.rlp.rollouts.max_thought_tokens, r.rlp.rollouts.temperature) == (16, 2048, 0.7)
    assert (r.rlp.teacher.kind, r.rlp.teacher.tau, r.rlp.loss.ntp_weight) == ('ema', 0.999, 0.0)
    assert (r.rlp.positions.unit, r.rlp.positions.k, r.data.seq_len) == ('document', 1, 2048)
    assert (r.trainer.optimizer.lr, r.trainer.scheduler.name, r.trainer.global_train_batch_size) == (
        1e-6,
        'constant',
        512,
    )
    assert r.trainer.precision == 'amp_bf16' and r.trainer.fsdp is not None
    assert load_recipe(REPO / 'recipes' / 'qwen3-1.7b-rlp-ntp.yaml').rlp.loss.ntp_weight > 0
    assert load_recipe(REPO / 'recipes' / 'cpt-baseline.yaml').rlp is None
    mixture = load_recipe(REPO / 'recipes' / 'qwen3-1.7b-rlp-mixture.yaml').data.streams
    assert len(mixture) >= 3 and all(s.proportion for s in mixture.values())


def _differences(base: Any, child: Any, path: str = '') -> dict[str, tuple[Any, Any]]:
    """Leaf key paths where two plain recipe dicts differ: {path: (base value, child value)}."""
    if isinstance(base, dict) and isinstance(child, dict):
        out = {}
        for key in [*base, *(k for k in child if k not in base)]:
            sub = f'{path}.{key}' if path else key
            out.update(_differences(base.get(key, '<absent>'), child.get(key, '<absent>'), sub))
        return out
    return {} if base == child else {path: (base, child)}


CHILDREN = {
    'qwen3-1.7b-horizon.yaml': (
        'qwen3-1.7b-rlp.yaml',
        {
            'run_name': 'qwen3-1.7b-horizon',
            'rlp.reward.kind': 'horizon',
            'rlp.reward.horizon': 8,
            'rlp.reward.discount': 0.7,
        },
    ),
    'qwen3-1.7b-rpt.yaml': (
        'qwen3-1.7b-rlp.yaml',
        {'run_name': 'qwen3-1.7b-rpt', 'rlp.reward.kind': 'rpt', 'rlp.positions.strategy': 'entropy'},
    ),
    'demo-horizon.yaml': (
        'demo-rlp.yaml',
        {'run_name': 'demo-horizon', 'rlp.reward.kind': 'horizon', 'rlp.reward.horizon': 8, 'rlp.reward.discount': 0.7},
    ),
    'demo-rpt.yaml': ('demo-rlp.yaml', {'run_name': 'demo-rpt', 'rlp.reward.kind': 'rpt'}),
    'smollm2-135m-rlp-ntp.yaml': (
        'smollm2-135m-rlp.yaml',
        {'run_name': 'smollm2-135m-rlp-ntp', 'rlp.loss.ntp_weight': 1.0},
    ),
    'smollm2-135m-cpt.yaml': (
        'smollm2-135m-rlp.yaml',
        {'run_name': 'smollm2-135m-cpt', 'rlp': None, 'trainer.max_duration': '70ba', 'trainer.save_interval': '70ba'},
    ),
    'qwen3-1.7b-rlp-ntp.yaml': (
        'qwen3-1.7b-rlp.yaml',
        {'run_name': 'qwen3-1.7b-rlp-ntp', 'rlp.loss.ntp_weight': 1.0},
    ),
    'qwen3-1.7b-rlp-mixture.yaml': (
        'qwen3-1.7b-rlp-ntp.yaml',
        {
            'run_name': 'qwen3-1.7b-rlp-mixture',
            'data.streams.crossthink': '<absent>',
            **{f'data.streams.{n}': '<stream>' for n in ('web', 'academic', 'reasoning')},
        },
    ),
    'cpt-baseline.yaml': (
        'qwen3-1.7b-rlp.yaml',
        {
            'run_name': 'qwen3-1.7b-cpt',
            'rlp': None,
            'trainer.max_duration': '1000ba',
            'trainer.device_train_microbatch_size': 8,
            'trainer.optimizer.name': 'decoupled_adamw',
            'trainer.optimizer.weight_decay': 0.1,
            'trainer.scheduler.name': 'cosine_with_warmup',
            'trainer.scheduler.alpha_f': 0.1,
            'trainer.save_interval': '100ba',
        },
    ),
}


@pytest.mark.parametrize('child', sorted(CHILDREN))
def test_variant_differs_from_its_base_only_where_declared(child: str):
    """Each variant names its base and, merged, differs from it in exactly the keys listed here (what the
    variant's header comment declares); everything else (model, data, batch, FSDP, ...) is the base's."""
    base_name, expected = CHILDREN[child]
    assert yaml.safe_load((REPO / 'recipes' / child).read_text())['base'] == base_name
    base = recipe_to_dict(load_recipe(REPO / 'recipes' / base_name))
    merged = recipe_to_dict(load_recipe(REPO / 'recipes' / child))
    found = _differences(base, merged)
    assert set(found) == set(expected), sorted(found)
    for path, value in expected.items():
        if value != '<stream>':
            assert found[path][1] == value, path
    if child == 'qwen3-1.7b-rlp-mixture.yaml':
        streams = merged['data']['streams']
        assert list(streams) == ['web', 'academic', 'reasoning']
        assert [s['proportion'] for s in streams.values()] == [0.5, 0.3, 0.2]
        assert all(s['remote'].startswith('s3://YOUR-BUCKET/rlp/data/') for s in streams.values())


def test_smoke_recipe_trains_on_bundled_corpus(tmp_path):
    """smoke-cpu.yaml on 400 synthetic documents prepared by pipeline.prepare, shortened to 3 batches."""
    from pipeline.bundled_tokenizer import EOS_TEXT, bundled_tokenizer_dir
    from pipeline.prepare import PrepareArgs, prepare
    from pipeline.synthetic import write_jsonl

    write_jsonl(tmp_path / 'corpus.jsonl', 400, seed=0)
    prepare(
        PrepareArgs(
            inputs=[str(tmp_path / 'corpus.jsonl')],
            tokenizer=str(bundled_tokenizer_dir()),
            seq_len=128,
            out=str(tmp_path / 'data'),
            eos_text=EOS_TEXT,
            progress=False,
        ),
        log=lambda *a: None,
    )
    proc = launch(
        REPO / 'recipes' / 'smoke-cpu.yaml',
        nproc=None,
        cwd=tmp_path,
        overrides=(
            f'variables.data_dir={tmp_path / "data"}',
            'trainer.max_duration=3ba',
            'rlp.log.every_n_batches=1',
            'data.clean_stale_shared_memory=false',
        ),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / 'runs' / 'smoke-cpu'
    assert sorted(read_metrics(str(run / 'metrics.jsonl'))) == [0, 1, 2]
    assert (run / 'thoughts.jsonl').stat().st_size > 0
    assert 'rlp/gain_vs_ema' in proc.stdout and 'sampled thoughts' in proc.stdout


# Nemotron-Nano-12B-v2's published architecture (its config.json): 62 blocks in this pattern, widths below shrunk
NEMOTRON_NANO_12B_PATTERN = 'M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M-'


def test_nemotron_recipe_builds_the_native_class_and_takes_two_rlp_steps(tokenizer):
    """nemotron-nano-12b-rlp.yaml: no remote code, the paper's settings (G 16, 2048-token thoughts, T 0.7, lr 1e-6
    constant, 512 prompts, NTP off) and ~250M input tokens; the model class its model_type maps to, built from a
    scaled-down copy of the real config (same 62-block pattern, tiny widths) through the recipe's model builder, gets
    one FSDP unit per NemotronHBlock and takes two RLP steps (the recipe's RLP settings with G and the thought length
    shrunk, its AdamW settings): finite losses, a finite gradient for every parameter, Mamba2 and attention
    weights updated, the EMA teacher moved."""
    import dataclasses

    import torch

    from rlp.config import RLPConfig
    from rlp.run.models import build_hf_model, wrap_blocks_for_fsdp
    from rlp.run.recipe_schema import ModelConfig
    from rlp.step import rlp_loss
    from rlp.teacher import Teachers
    from rlp.template import resolve_template
    from tests.helpers.rlp_batches import packed_batch

    r = load_recipe(REPO / 'recipes' / 'nemotron-nano-12b-rlp.yaml')
    assert not r.model.trust_remote_code and not r.tokenizer.kwargs.get('trust_remote_code')
    ro = r.rlp.rollouts
    assert (ro.group_size, ro.max_thought_tokens, ro.temperature, r.rlp.loss.ntp_weight) == (16, 2048, 0.7, 0.0)
    assert (r.trainer.optimizer.lr, r.trainer.scheduler.name, r.trainer.global_train_batch_size) == (
        1e-6,
        'constant',
        512,
    )
    steps = int(r.trainer.max_duration.rstrip('ba'))
    assert 240e6 < steps * 512 * 1630 < 260e6  # ~250M RLP input tokens at ~1,630 prefix tokens per prompt

    config = {
        'model_type': 'nemotron_h',
        'hybrid_override_pattern': NEMOTRON_NANO_12B_PATTERN,
        'hidden_size': 32,
        'intermediate_size': 64,
        'num_attention_heads': 4,
        'num_key_value_heads': 2,
        'head_dim': 8,
        'mamba_num_heads': 4,
        'mamba_head_dim': 8,
        'n_groups': 2,
        'ssm_state_size': 8,
        'chunk_size': 16,
        'tie_word_embeddings': False,
    }
    model_cfg = dataclasses.replace(r.model, name_or_path=None, pretrained=False, config=config, torch_dtype=None)
    hf = build_hf_model(ModelConfig(**{f.name: getattr(model_cfg, f.name) for f in dataclasses.fields(ModelConfig)}),
                        tokenizer)  # fmt: skip
    assert type(hf).__name__ == 'NemotronHForCausalLM' and type(hf).__module__.startswith('transformers.models.')
    assert hf.config.layers_block_type.count('linear_attention') == 28 and len(hf.model.layers) == 62
    assert wrap_blocks_for_fsdp(hf) == ['NemotronHBlock']
    assert sum(map(hf.fsdp_wrap_fn, hf.modules())) == 62 and hf.activation_checkpointing_fn(hf.model.layers[3])

    rlp_map = recipe_to_dict(r)['rlp']
    rlp_map['rollouts'] = {**rlp_map['rollouts'], 'group_size': 2, 'max_thought_tokens': 3}
    rlp_map['positions'] = {**rlp_map['positions'], 'min_context': 4}
    cfg = RLPConfig.from_dict(rlp_map)
    template = resolve_template(tokenizer, cfg.template, model=hf)
    opt_cfg = r.trainer.optimizer
    opt = torch.optim.AdamW(
        hf.parameters(), lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), weight_decay=opt_cfg.weight_decay
    )
    teachers = Teachers(cfg.teacher.kind, cfg.teacher.tau)
    teachers.ensure(hf)
    before = {k: v.detach().clone() for k, v in hf.named_parameters()}
    ema_before = {k: v.detach().clone() for k, v in teachers.ema.module.named_parameters()}
    hf.train()
    for i in range(2):
        loss, stats = rlp_loss(
            hf, teachers, packed_batch(tokenizer, rows=2, length=32, seed=i), cfg, template, key=(17, i)
        )
        assert torch.isfinite(loss) and stats.rollouts > 0
        loss.backward()
        missing = [k for k, v in hf.named_parameters() if v.grad is None or not torch.isfinite(v.grad).all()]
        assert not missing, f'parameters without a finite gradient: {missing[:5]}'
        opt.step()
        opt.zero_grad()
        teachers.update(hf)
    # (at lr 1e-6 AdamW's steps on tiny gradients, e.g. dt_bias's, can round away in fp32: only some must move)
    assert any(not torch.equal(v, before[k]) for k, v in hf.named_parameters() if 'mixer.A_log' in k)
    assert any(not torch.equal(v, before[k]) for k, v in hf.named_parameters() if 'mixer.q_proj' in k)
    assert any(not torch.equal(v, ema_before[k]) for k, v in teachers.ema.module.named_parameters())
