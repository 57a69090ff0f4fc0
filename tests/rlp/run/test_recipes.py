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
