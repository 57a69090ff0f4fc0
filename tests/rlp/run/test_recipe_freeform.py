"""The free-form recipe sections checked against their target classes (`rlp.run.recipe_freeform`).

Against the real classes: transformers' config classes (Llama, GPT-2 with its attribute aliases, Qwen3), the bundled
tokenizer loaded by `build_tokenizer` and Composer's FSDP config dataclass. Every key of every shipped recipe and of
the test models passes; a typo (`num_hiden_layers`, `use_fsat`, `reshard_after_forwrd`) and a wrongly typed value
(`hidden_size: "64x"`) are one line naming the key, with the closest valid key; through `rlp.train` a typo in
`model.config` exits 2 before anything is written (it used to train the default depth).
"""

from __future__ import annotations

import pytest

from rlp.run.models import build_tokenizer
from rlp.run.recipe import load_recipe
from rlp.run.recipe_freeform import check_free_form, check_fsdp_keys, check_model_config
from rlp.run.recipe_schema import ConfigError, TokenizerConfig
from rlp.run.train import main as train_main
from tests.helpers.commands import tree
from tests.helpers.training import REPO, TINY_LLAMA, tiny_recipe, write_recipe


@pytest.mark.parametrize('path', sorted((REPO / 'recipes').glob('*.yaml')), ids=lambda p: p.name)
def test_shipped_recipes_pass(path):
    check_free_form(load_recipe(path))


def test_model_config_keys_and_types():
    check_model_config(TINY_LLAMA)
    check_model_config({'model_type': 'gpt2', 'n_embd': 32, 'hidden_size': 32, 'n_layer': 2, 'attn_pdrop': 0.0})
    check_model_config({'model_type': 'qwen3', 'hidden_size': 32, 'head_dim': 8, 'rope_theta': 10000})
    with pytest.raises(ConfigError) as err:
        check_model_config({**TINY_LLAMA, 'num_hiden_layers': 3})
    text = str(err.value)
    assert text.startswith("unknown key 'model.config.num_hiden_layers'") and "'num_hidden_layers'" in text
    assert 'LlamaConfig' in text and '\n' not in text
    with pytest.raises(ConfigError, match=r"model.config.hidden_size: got '64x', expected int"):
        check_model_config({**TINY_LLAMA, 'hidden_size': '64x'})
    with pytest.raises(ConfigError, match=r"model.config.model_type='lama'.*did you mean 'llama'"):
        check_model_config({'model_type': 'lama'})


def test_tokenizer_kwargs():
    ok = {'use_fast': True, 'padding_side': 'left', 'model_max_length': 64, 'trust_remote_code': False}
    assert build_tokenizer(TokenizerConfig(kwargs=ok)).padding_side == 'left'
    with pytest.raises(ConfigError) as err:
        build_tokenizer(TokenizerConfig(kwargs={'use_fsat': True}))
    text = str(err.value)
    assert text.startswith("unknown key 'tokenizer.kwargs.use_fsat'") and "'use_fast'" in text and '\n' not in text


def test_fsdp_keys():
    check_fsdp_keys({'reshard_after_forward': True, 'activation_checkpointing': False, 'state_dict_type': 'sharded'})
    with pytest.raises(ConfigError) as err:
        check_fsdp_keys({'reshard_after_forwrd': False})
    text = str(err.value)
    assert text.startswith("unknown key 'trainer.fsdp.reshard_after_forwrd'") and "'reshard_after_forward'" in text


def test_train_refuses_a_model_config_typo(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / 'r.yaml', tiny_recipe(streams={'web': {'local': str(tmp_path)}}))
    before = tree(tmp_path)
    assert train_main([str(recipe), 'model.config.num_hiden_layers=3']) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key 'model.config.num_hiden_layers'" in err and '\n' not in err, err
    assert tree(tmp_path) == before
