"""rlp.template: tag resolution against real tokenizers built here (bundled BPE, one without tags, one that splits
the tag differently inside text), the instruction ids, and adding the tags with an embedding resize."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rlp.config import TemplateConfig
from rlp.strictcfg import ConfigError
from rlp.template import TemplateError, add_think_tokens, resolve_template
from tests.helpers.tiny_models import build_tiny_model


def _plain_bpe() -> PreTrainedTokenizerFast:
    """A byte-level BPE over a few letters with no <think> tokens at all."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from tokenizers import decoders, trainers

    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=['<eos>'],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(['the cat sat on the mat'] * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token='<eos>', pad_token='<eos>')


def _inconsistent_bpe() -> PreTrainedTokenizerFast:
    """'<think>' is an ordinary BPE token, but the merge 'x' + '<' wins inside 'x<think>x', splitting the tag."""
    chars = list('<think>/x12 \n')
    vocab = {c: i for i, c in enumerate(chars)}
    merges = [
        ('x', '<'),
        ('<', 't'),
        ('<t', 'h'),
        ('<th', 'i'),
        ('<thi', 'n'),
        ('<thin', 'k'),
        ('<think', '>'),
        ('<', '/'),
        ('</', 't'),
        ('</t', 'h'),
        ('</th', 'i'),
        ('</thi', 'n'),
        ('</thin', 'k'),
        ('</think', '>'),
    ]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_bundled_tokenizer_resolves(tokenizer):
    """The bundled tokenizer has both tags as single special tokens; EOS/pad/tags are excluded targets."""
    tpl = resolve_template(tokenizer, TemplateConfig(instruction='Think first.'))
    assert tokenizer.convert_ids_to_tokens([tpl.open_ids[0], tpl.close_ids[0]]) == ['<think>', '</think>']
    assert tpl.instruction_ids == tuple(tokenizer('Think first.', add_special_tokens=False)['input_ids'])
    assert set(tpl.excluded_targets) == {tpl.open_ids[0], tpl.close_ids[0], tokenizer.eos_token_id}
    assert resolve_template(tokenizer, TemplateConfig()).instruction_ids == ()


def test_tokenizer_without_tags_is_refused_with_fix():
    """A tokenizer lacking the tags raises TemplateError naming the tag and the add_tags fix."""
    with pytest.raises(TemplateError, match=r"open_tag='<think>' is not a single token.*add_tags=true"):
        resolve_template(_plain_bpe(), TemplateConfig())


def test_inconsistently_split_tag_is_refused():
    """A tag that is one token alone but splits inside text is refused (stop/target placement would break)."""
    tok = _inconsistent_bpe()
    assert len(tok('<think>', add_special_tokens=False)['input_ids']) == 1
    with pytest.raises(TemplateError, match='tokenised inconsistently'):
        resolve_template(tok, TemplateConfig())


def test_add_think_tokens_adds_and_resizes():
    """add_think_tokens makes a tag-less tokenizer usable and grows the model's embeddings to len(tokenizer)."""
    tok = _plain_bpe()
    model = build_tiny_model('llama', vocab_size=len(tok))
    n = add_think_tokens(tok, model, TemplateConfig())
    assert n == 2
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    tpl = resolve_template(tok, TemplateConfig())
    assert tpl.open_ids[0] != tpl.close_ids[0]
    assert add_think_tokens(tok, model, TemplateConfig()) == 0  # idempotent


def test_template_config_rejects_bad_values():
    """Empty or identical tags are config errors with one-line messages."""
    with pytest.raises(ConfigError, match='empty'):
        TemplateConfig(open_tag=' ')
    with pytest.raises(ConfigError, match='must differ'):
        TemplateConfig(open_tag='<t>', close_tag='<t>')


def _loop_mean(weight: torch.Tensor, ids: list[int]) -> torch.Tensor:
    total = torch.zeros_like(weight[0])
    for i in ids:
        total = total + weight[i]
    return total / len(ids)


@pytest.mark.parametrize('tied', [True, False])
def test_tag_init_text_sets_rows_to_the_mean_of_the_text_tokens(tied):
    """tag_init=text: each added tag's input row (and output row when untied) equals the mean, summed in a loop, of
    the rows of the tokens of its init text (default: the tag string's own pieces, encoded before the tag exists);
    every other row is unchanged."""
    tok = _plain_bpe()
    model = build_tiny_model('llama', vocab_size=len(tok))
    model.config.tie_word_embeddings = tied
    if not tied:
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    pieces = tok('</think>', add_special_tokens=False)['input_ids']
    so = tok(' So', add_special_tokens=False)['input_ids']
    assert len(pieces) > 1
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    cfg = TemplateConfig(tag_init='text', open_init_text=' So', close_init_text=None)
    assert add_think_tokens(tok, model, cfg) == 2
    tpl = resolve_template(tok, cfg)
    inp = model.get_input_embeddings().weight.detach()
    out = model.get_output_embeddings().weight.detach()
    n = before_in.shape[0]
    assert torch.equal(inp[:n], before_in) and torch.equal(out[:n], before_out)
    torch.testing.assert_close(inp[tpl.close_ids[0]], _loop_mean(before_in, pieces), rtol=0, atol=1e-6)
    torch.testing.assert_close(inp[tpl.open_ids[0]], _loop_mean(before_in, so), rtol=0, atol=1e-6)
    if tied:
        assert out.data_ptr() == inp.data_ptr()
    else:
        torch.testing.assert_close(out[tpl.close_ids[0]], _loop_mean(before_out, pieces), rtol=0, atol=1e-6)
        torch.testing.assert_close(out[tpl.open_ids[0]], _loop_mean(before_out, so), rtol=0, atol=1e-6)
        assert not torch.equal(out[tpl.close_ids[0]], inp[tpl.close_ids[0]])


def test_tag_init_mean_starts_tags_at_the_mean_row():
    """tag_init=mean (transformers' resize): added rows are the mean of the existing rows, up to the tiny noise
    transformers samples around it."""
    tok = _plain_bpe()
    model = build_tiny_model('llama', vocab_size=len(tok))
    mean = model.get_input_embeddings().weight.detach().mean(dim=0).clone()
    add_think_tokens(tok, model, TemplateConfig(tag_init='mean'))
    tpl = resolve_template(tok, TemplateConfig())
    for tag in (tpl.open_ids[0], tpl.close_ids[0]):
        torch.testing.assert_close(model.get_input_embeddings().weight[tag].detach(), mean, rtol=0, atol=1e-3)


def test_default_tag_init_closes_like_a_sentence_end():
    """The default template (tag_init=text, close_init_text='.'): the added closing tag's rows equal the row of
    '.'; the opening tag's the mean of its own pieces."""
    tok = _plain_bpe()
    model = build_tiny_model('llama', vocab_size=len(tok))
    before = model.get_input_embeddings().weight.detach().clone()
    period = tok('.', add_special_tokens=False)['input_ids']
    pieces = tok('<think>', add_special_tokens=False)['input_ids']
    add_think_tokens(tok, model, TemplateConfig())
    tpl = resolve_template(tok, TemplateConfig())
    emb = model.get_input_embeddings().weight.detach()
    assert len(period) == 1 and torch.equal(emb[tpl.close_ids[0]], before[period[0]])
    torch.testing.assert_close(emb[tpl.open_ids[0]], _loop_mean(before, pieces), rtol=0, atol=1e-6)


def test_tag_init_config_is_checked():
    """Init texts other than the defaults need tag_init=text and must not be empty."""
    TemplateConfig(tag_init='mean')  # the defaults are accepted with mean
    with pytest.raises(ConfigError, match='close_init_text=.*only with rlp.template.tag_init=text'):
        TemplateConfig(tag_init='mean', close_init_text='\n')
    with pytest.raises(ConfigError, match='open_init_text=.*only with rlp.template.tag_init=text'):
        TemplateConfig(tag_init='mean', open_init_text=' So')
    with pytest.raises(ConfigError, match='open_init_text is empty'):
        TemplateConfig(tag_init='text', open_init_text='')


def test_text_tags_are_the_strings_tokens(tokenizer):
    """``tags: text``: the tag ids are the strings' own tokens (as the tokenizer encodes them alone), nothing is
    added, and only EOS/padding are excluded from the targets (the tag tokens are ordinary text); add_tags together
    with text tags is refused in one line."""
    cfg = TemplateConfig(tags='text', open_tag=' Hmm,', close_tag=' so)')
    size = len(tokenizer)
    tpl = resolve_template(tokenizer, cfg)
    encode = lambda t: tuple(tokenizer(t, add_special_tokens=False)['input_ids'])
    assert tpl.open_ids == encode(' Hmm,') and tpl.close_ids == encode(' so)') and len(tpl.close_ids) == 2
    assert len(tokenizer) == size and tpl.text_tags
    assert set(tpl.excluded_targets) == {tokenizer.eos_token_id}
    with pytest.raises(ConfigError, match='drop add_tags'):
        TemplateConfig(tags='text', add_tags=True)
