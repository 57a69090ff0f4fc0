"""Checks `rlp.run.models` against transformers itself: a model saved with `save_pretrained` loads back from its folder
with identical weights; a config mapping builds a seeded random-init model (same seed, same weights; vocabulary
from the tokenizer); `bundled` names the shipped tokenizer; missing think tags are added on request; bad names
give one-line errors."""

from __future__ import annotations

import pytest
import torch

from rlp.config import TemplateConfig
from rlp.run.models import build_composer_model, build_hf_model, build_tokenizer
from rlp.run.recipe_schema import ConfigError, ModelConfig, TokenizerConfig
from tests.helpers.tiny_models import build_tiny_model


def test_pretrained_folder_round_trip(tmp_path, tokenizer):
    """name_or_path=<folder> loads the saved weights exactly; pretrained=false keeps the config, not weights."""
    model = build_tiny_model('qwen3', len(tokenizer), seed=3)
    model.save_pretrained(tmp_path / 'm')
    tokenizer.save_pretrained(tmp_path / 'm')
    loaded = build_hf_model(
        ModelConfig(name_or_path=str(tmp_path / 'm')),
        build_tokenizer(TokenizerConfig(name_or_path=str(tmp_path / 'm'))),
    )
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    fresh = build_hf_model(ModelConfig(name_or_path=str(tmp_path / 'm'), pretrained=False), tokenizer, seed=1)
    assert type(fresh) is type(model)
    assert not torch.equal(fresh.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_random_init_from_config_is_seeded(tokenizer):
    """The same seed gives the same weights, another seed different ones; vocab = len(tokenizer)."""
    cfg = ModelConfig(
        config={
            'model_type': 'llama',
            'hidden_size': 32,
            'intermediate_size': 64,
            'num_hidden_layers': 2,
            'num_attention_heads': 4,
            'num_key_value_heads': 2,
        }
    )
    a, b, c = (build_hf_model(cfg, tokenizer, seed=s) for s in (5, 5, 6))
    assert a.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert torch.equal(a.lm_head.weight, b.lm_head.weight) and not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_bundled_tokenizer_and_tag_adding(tokenizer):
    """'bundled' is the shipped tokenizer; add_tags adds missing tags and resizes the embeddings."""
    model, tok = build_composer_model(
        ModelConfig(config={'model_type': 'gpt2', 'n_embd': 32, 'n_layer': 1, 'n_head': 4}),
        TokenizerConfig(name_or_path='bundled'),
        template=TemplateConfig(open_tag='<reason>', close_tag='</reason>', add_tags=True),
    )
    assert len(tok) == len(tokenizer) + 2 and tok.convert_tokens_to_ids('<reason>') >= len(tokenizer)
    assert model.model.get_input_embeddings().weight.shape[0] == len(tok)
    assert model.tokenizer is tok


def test_bad_names(tmp_path, tokenizer):
    """A folder without a tokenizer or model, or an unknown model_type, is a ConfigError naming the key."""
    with pytest.raises(ConfigError, match='tokenizer.name_or_path'):
        build_tokenizer(TokenizerConfig(name_or_path=str(tmp_path / 'none')))
    with pytest.raises(ConfigError, match='model.config'):
        build_hf_model(ModelConfig(config={'model_type': 'no-such-architecture'}), tokenizer)
    with pytest.raises(ConfigError, match='model.name_or_path'):
        build_hf_model(ModelConfig(name_or_path=str(tmp_path / 'none')), tokenizer)
