"""``model.gguf_file`` / ``tokenizer.gguf_file`` against a tiny Llama written as a GGUF file by the ``gguf`` package
(tests.helpers.tiny_gguf): a recipe that names the file builds the Hugging Face model it was written from (same
logits), dense and trainable (not marked quantized), with the tokenizer it was written from; the think tags are added
as ``rlp.template`` says. Bad settings are one-line ``ConfigError`` s naming the key: no folder to find the file in,
not a .gguf name, a random init, a file missing from the folder."""

from __future__ import annotations

import pytest
import torch

from rlp.config import TemplateConfig
from rlp.run.models import build_composer_model
from rlp.run.recipe import load_recipe
from rlp.run.recipe_schema import ConfigError, ModelConfig, TokenizerConfig
from tests.helpers.tiny_gguf import tiny_bpe_tokenizer, write_tiny_llama_gguf
from tests.helpers.training import REPO

TEXT = 'Anna reads 3 books a week; in 4 weeks she reads 3 * 4 = 12 books.'


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp('gguf')
    tok = tiny_bpe_tokenizer()
    return folder, write_tiny_llama_gguf(folder / 'tiny.gguf', tok), tok


def test_recipe_gguf_file_builds_the_reference_model(tiny):
    """The composer model built from gguf_file gives the reference logits over the original vocabulary; the closing
    tag starts from its pieces (close_init_text: null); gradients flow to every weight."""
    folder, ref, ref_tok = tiny
    template = TemplateConfig(add_tags=True, close_init_text=None)
    model, tok = build_composer_model(
        ModelConfig(name_or_path=str(folder), gguf_file='tiny.gguf'),
        TokenizerConfig(name_or_path=str(folder), gguf_file='tiny.gguf'),
        template=template,
    )
    hf = model.model
    ids = ref_tok(TEXT)['input_ids']
    assert tok(TEXT)['input_ids'] == ids
    x = torch.tensor([ids])
    logits = hf(x).logits
    with torch.no_grad():
        want = ref(x).logits
    torch.testing.assert_close(logits[..., : want.shape[-1]], want, rtol=0, atol=1e-5)
    assert getattr(hf, 'hf_quantizer', None) is None and not hf.is_quantized
    logits.sum().backward()
    assert all(p.grad is not None for p in hf.parameters())
    close = tok.convert_tokens_to_ids('</think>')
    pieces = ref_tok('</think>', add_special_tokens=False)['input_ids']
    emb = ref.get_input_embeddings().weight.detach()
    torch.testing.assert_close(hf.get_input_embeddings().weight[close].detach(), emb[pieces].mean(0), rtol=0, atol=1e-6)


def test_missing_file_is_refused(tiny):
    folder, _, _ = tiny
    with pytest.raises(ConfigError, match=r"model.gguf_file='other.gguf': no such file in the folder .*tiny.gguf"):
        build_composer_model(ModelConfig(name_or_path=str(folder), gguf_file='other.gguf'), TokenizerConfig())
    with pytest.raises(ConfigError, match=r"tokenizer.gguf_file='other.gguf': no such file"):
        build_composer_model(
            ModelConfig(name_or_path=str(folder), gguf_file='tiny.gguf'),
            TokenizerConfig(name_or_path=str(folder), gguf_file='other.gguf'),
        )


@pytest.mark.parametrize(
    'overrides, message',
    [
        (['model.gguf_file=m.gguf'], "model.gguf_file='m.gguf' needs model.name_or_path"),
        (['tokenizer.gguf_file=m.gguf'], "tokenizer.gguf_file='m.gguf' needs tokenizer.name_or_path"),
        (
            ['model.config=null', 'model.name_or_path=models/x', 'model.gguf_file=m.bin'],
            "model.gguf_file='m.bin' is not a .gguf file name",
        ),
        (
            ['model.config=null', 'model.name_or_path=models/x', 'model.gguf_file=m.gguf', 'model.pretrained=false'],
            "model.gguf_file='m.gguf' with model.pretrained=false",
        ),
    ],
)
def test_recipe_checks_gguf_file(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(REPO / 'recipes' / 'smoke-cpu.yaml', overrides)
    assert str(err.value).startswith(message) and '\n' not in str(err.value), str(err.value)
