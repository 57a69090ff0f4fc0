"""The GPU recipes' numerics, reproduced on CPU with a tiny Llama: they train at lr 1e-6 like an fp32 model.

Checked: (1) for every GPU recipe, the weight change after 20 AdamW steps at lr 1e-6 with the recipe's weight dtype
and precision (amp_bf16 = bf16 autocast, on CPU here) matches an fp32 reference within 5% (relative L2 norm of the
difference of the changes; bf16 autocast rounds activations and gradients to 8 mantissa bits, ~1% here, and Adam's
normalised step carries that error); (2) the old setting, bf16 weights, loses most of the update (the same
comparison is off by > 50%), and is refused by the recipe check unless ``trainer.low_precision_weights`` opts in;
(3) the Trainer refuses a model with dropout at INIT, naming ``model.config_overrides``, and the overrides switch
GPT-2's dropout off.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from composer import Trainer
from composer.models import HuggingFaceModel

from rlp.config import RLPConfig
from rlp.hf import active_dropout
from rlp.run.algorithm import RLP
from rlp.run.models import build_hf_model
from rlp.run.recipe import load_recipe
from rlp.run.recipe_schema import ConfigError, ModelConfig
from tests.helpers.rlp_batches import VOCAB
from tests.helpers.tiny_models import build_tiny_model

RECIPES = Path(__file__).resolve().parents[3] / 'recipes'
GPU_RECIPES = ['qwen3-1.7b-rlp.yaml', 'qwen3-1.7b-rlp-ntp.yaml', 'qwen3-1.7b-rlp-mixture.yaml', 'cpt-baseline.yaml',
               'nemotron-nano-12b-rlp.yaml']  # fmt: skip
_DTYPES = {None: torch.float32, 'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def _weight_change(dtype: torch.dtype, autocast: bool, lr: float, steps: int = 20) -> dict[str, torch.Tensor]:
    """Change of every weight (float64) after ``steps`` AdamW steps of next-token loss on fixed random batches."""
    model = build_tiny_model('llama', VOCAB, seed=0).to(dtype).train()
    start = {k: v.detach().double().clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randint(3, VOCAB, (4, 64), generator=gen)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return {k: v.detach().double() - start[k] for k, v in model.named_parameters()}


def _rel_err(change: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    num = sum(float(((change[k] - ref[k]) ** 2).sum()) for k in ref)
    return (num / sum(float((v**2).sum()) for v in ref.values())) ** 0.5


@pytest.fixture(scope='module')
def fp32_reference():
    return _weight_change(torch.float32, autocast=False, lr=1e-6)


@pytest.mark.parametrize('name', GPU_RECIPES)
def test_gpu_recipes_train_like_fp32(name, fp32_reference):
    recipe = load_recipe(RECIPES / name)
    assert recipe.trainer.precision == 'amp_bf16'
    assert (recipe.trainer.fsdp or {}).get('mixed_precision') == 'FULL'  # fp32 params and gradient reduction
    lr = recipe.trainer.optimizer.lr
    ref = fp32_reference if lr == 1e-6 else _weight_change(torch.float32, autocast=False, lr=lr)
    change = _weight_change(_DTYPES[recipe.model.torch_dtype], autocast=True, lr=lr)
    assert _rel_err(change, ref) < 0.05


def test_bf16_master_weights_lose_the_update_and_are_refused(fp32_reference):
    change = _weight_change(torch.bfloat16, autocast=True, lr=1e-6)
    assert _rel_err(change, fp32_reference) > 0.5  # the old recipe setting: most updates round to nothing
    with pytest.raises(ConfigError, match='low_precision_weights'):
        load_recipe(RECIPES / 'qwen3-1.7b-rlp.yaml', ['model.torch_dtype=bfloat16'])
    opted_in = load_recipe(
        RECIPES / 'qwen3-1.7b-rlp.yaml', ['model.torch_dtype=bfloat16', 'trainer.low_precision_weights=true']
    )
    assert opted_in.model.torch_dtype == 'bfloat16'


def test_dropout_refused_at_init_and_config_overrides_switch_it_off(tokenizer):
    gpt2 = {'model_type': 'gpt2', 'n_embd': 32, 'n_layer': 1, 'n_head': 4}
    hf = build_hf_model(ModelConfig(config=gpt2), tokenizer)
    assert active_dropout(hf)
    with pytest.raises(ConfigError, match='model.config_overrides'):
        Trainer(
            model=HuggingFaceModel(hf, tokenizer=tokenizer, use_logits=True),
            algorithms=[RLP(RLPConfig())],
            device='cpu',
            progress_bar=False,
            log_to_console=False,
        )
    off = {'attn_pdrop': 0.0, 'resid_pdrop': 0.0, 'embd_pdrop': 0.0}
    assert active_dropout(build_hf_model(ModelConfig(config=gpt2, config_overrides=off), tokenizer)) == []
    with pytest.raises(ConfigError, match='no field'):
        build_hf_model(ModelConfig(config=gpt2, config_overrides={'dropout_rate': 0.0}), tokenizer)


def test_config_overrides_apply_to_pretrained_weights(tokenizer, tmp_path):
    """A saved GPT-2 loaded with overrides: same weights, no dropout."""
    gpt2 = {'model_type': 'gpt2', 'n_embd': 32, 'n_layer': 1, 'n_head': 4}
    saved = build_hf_model(ModelConfig(config=gpt2), tokenizer)
    saved.save_pretrained(tmp_path)
    off = {'attn_pdrop': 0.0, 'resid_pdrop': 0.0, 'embd_pdrop': 0.0}
    loaded = build_hf_model(ModelConfig(name_or_path=str(tmp_path), config_overrides=off), tokenizer)
    assert active_dropout(loaded) == []
    for (name, a), (_, b) in zip(saved.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
