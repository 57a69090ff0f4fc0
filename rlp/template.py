"""The thought template: ``[instruction] prefix <think> thought </think> x_t``, as token ids.

Decisions (the paper shows only the layout ``prefix <think> ... </think> x_t`` of its Figure 1):

- Raw concatenation of token ids, no chat template: RLP runs on base models and arbitrary text.
- The target x_t is placed *directly* after the closing tag's token (no newline in between), exactly where the
  no-think prediction puts it directly after the prefix.
- The optional ``instruction`` (tokenised without special tokens) precedes the prefix in BOTH the thought query and
  the no-think query, so the only difference between S_pred and S_EMA is the thought itself.
- ``tags: special`` (default): each tag must be ONE token of the tokenizer and be tokenised the same way alone and
  inside text; otherwise the stop condition and the position of x_t would be ambiguous. A tokenizer without the
  tags is refused with an error that names the fix (``rlp.template.add_tags: true`` makes the training entry call
  :func:`add_think_tokens`, which adds them as special tokens and resizes the embeddings before the optimizer
  exists).
- ``tags: text``: each tag is the token sequence of its string encoded alone, written into the ids as it is (the
  sampler stops when a thought ends with the closing sequence). Nothing is added, so a pretrained model reads and
  writes the tags with embeddings it already has; the price is that the same tokens can also occur in ordinary
  text, so they stay possible targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from rlp.config import TemplateConfig

__all__ = ['TemplateError', 'ThoughtTemplate', 'add_think_tokens', 'init_tag_rows', 'resolve_template', 'tag_token_id']

_CONTEXTS = ('x{}x', ' {} ', '\n{}\n', '1{}2', '{}{}')


class TemplateError(ValueError):
    """The tokenizer cannot represent the thought template; the message names the tag and the fix."""


@dataclass(frozen=True)
class ThoughtTemplate:
    """Resolved token ids of the template.

    Attributes:
        open_ids / close_ids: the token ids of the opening and closing tags (one each with ``tags: special``).
        instruction_ids: ids of the instruction text (empty tuple when none).
        eos_id / pad_id: never chosen as targets x_t (None when the tokenizer has none).
        after_ids: token ids of ``rlp.positions.after`` (strategy ``after``): targets directly follow one of them.
    """

    open_ids: tuple[int, ...]
    close_ids: tuple[int, ...]
    instruction_ids: tuple[int, ...] = ()
    eos_id: Optional[int] = None
    pad_id: Optional[int] = None
    after_ids: tuple[tuple[int, ...], ...] = ()

    text_tags: bool = False

    def __post_init__(self) -> None:
        if not self.open_ids or not self.close_ids:
            raise TemplateError(f'a thought tag encodes to no token (open {self.open_ids}, close {self.close_ids})')

    @property
    def excluded_targets(self) -> tuple[int, ...]:
        """Token ids that are never a target: EOS, padding and the tags themselves (tags written as text are
        ordinary tokens and stay possible targets)."""
        ids = set() if self.text_tags else {*self.open_ids, *self.close_ids}
        ids.update(i for i in (self.eos_id, self.pad_id) if i is not None)
        return tuple(sorted(ids))


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)['input_ids'])


def _tag_in_vocab(tokenizer: Any, tag: str) -> bool:
    tok_id = tokenizer.convert_tokens_to_ids(tag)
    return tok_id is not None and not (
        tokenizer.unk_token_id is not None and tok_id == tokenizer.unk_token_id and tag != tokenizer.unk_token
    )


def tag_token_id(tokenizer: Any, tag: str, key: str = 'rlp.template.open_tag') -> int:
    """The single token id of ``tag``; refuses tags the tokenizer lacks or splits inconsistently.

    Raises:
        TemplateError: the tag is not one token, or it is tokenised differently inside text than alone.
    """
    alone = _encode(tokenizer, tag)
    if not _tag_in_vocab(tokenizer, tag) or len(alone) != 1:
        raise TemplateError(
            f'{key}={tag!r} is not a single token of this tokenizer (it encodes to {alone}); RLP needs each tag '
            f'as one token; set rlp.template.add_tags=true to add it as a special token (embeddings are resized), '
            f'or pick tags the tokenizer has'
        )
    tag_id = alone[0]
    for ctx in _CONTEXTS:
        text = ctx.format(tag, tag) if ctx == '{}{}' else ctx.format(tag)
        ids = _encode(tokenizer, text)
        if ids.count(tag_id) != text.count(tag):
            raise TemplateError(
                f'{key}={tag!r} is tokenised inconsistently: alone it is token {tag_id}, but {text!r} encodes to '
                f'{ids}; the tag must be a special (atomic) token; add it with rlp.template.add_tags=true or use '
                f'a tokenizer that declares it special'
            )
    return tag_id


def resolve_template(
    tokenizer: Any, cfg: TemplateConfig, model: Any = None, after: Sequence[str] = ()
) -> ThoughtTemplate:
    """Check ``cfg`` against ``tokenizer`` (and the embeddings of ``model``, when given); return the token ids,
    with those of the position texts ``after`` (``rlp.positions.after``).

    Raises:
        TemplateError: a tag is missing or split inconsistently (see :func:`tag_token_id`), or its id is beyond the
            model's embedding rows.
    """
    if tokenizer is None:
        raise TemplateError(
            'RLP needs a tokenizer to resolve the thought tags; pass RLP(..., tokenizer=tok) or '
            'build HuggingFaceModel(model, tokenizer=tok)'
        )
    if cfg.tags == 'text':
        open_ids, close_ids = tuple(_encode(tokenizer, cfg.open_tag)), tuple(_encode(tokenizer, cfg.close_tag))
    else:
        open_ids = (tag_token_id(tokenizer, cfg.open_tag, 'rlp.template.open_tag'),)
        close_ids = (tag_token_id(tokenizer, cfg.close_tag, 'rlp.template.close_tag'),)
    instruction = tuple(_encode(tokenizer, cfg.instruction)) if cfg.instruction else ()
    rows = model.get_input_embeddings().weight.shape[0] if model is not None else None
    if rows is not None and max(open_ids + close_ids) >= rows:
        raise TemplateError(
            f'thought tags have ids {open_ids}/{close_ids} but the model has only {rows} embedding rows; resize the '
            f'embeddings (rlp.template.add_tags=true)'
        )
    return ThoughtTemplate(
        open_ids=open_ids,
        close_ids=close_ids,
        text_tags=cfg.tags == 'text',
        instruction_ids=instruction,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        after_ids=tuple(tuple(_encode(tokenizer, text)) for text in after),
    )


def add_think_tokens(tokenizer: Any, model: Any, cfg: TemplateConfig) -> int:
    """Add the tags missing from ``tokenizer`` as special tokens and resize ``model``'s embeddings to match.

    Call before the optimizer is built (the training entry does, when ``rlp.template.add_tags`` is true). New
    embedding rows start as ``cfg.tag_init`` says: ``mean`` keeps transformers' initialisation (the mean of the
    existing rows), ``text`` sets each added tag's rows by :func:`init_tag_rows`.

    Returns:
        The number of tokens added (0 when both tags were already single tokens).
    """
    missing = [
        t
        for t in (cfg.open_tag, cfg.close_tag)
        if not (_tag_in_vocab(tokenizer, t) and len(_encode(tokenizer, t)) == 1)
    ]
    if not missing:
        return 0
    sources = {cfg.open_tag: cfg.open_init_text or cfg.open_tag, cfg.close_tag: cfg.close_init_text or cfg.close_tag}
    source_ids = {tag: _encode(tokenizer, sources[tag]) for tag in missing}  # before the tags become tokens
    added = tokenizer.add_special_tokens({'extra_special_tokens': missing}, replace_extra_special_tokens=False)
    if added and model is not None and model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        # mean: transformers' mean-of-rows start; text: the rows are set below, so skip its (logged) sampling
        model.resize_token_embeddings(len(tokenizer), mean_resizing=cfg.tag_init == 'mean')
    if model is not None and cfg.tag_init == 'text':
        for tag in missing:
            init_tag_rows(model, tokenizer.convert_tokens_to_ids(tag), source_ids[tag])
    return added


def init_tag_rows(model: Any, tag_id: int, source_ids: Sequence[int]) -> None:
    """Set row ``tag_id`` of the input embeddings E (V, d) to the mean of the rows ``source_ids``,
    E[tag] = (1/n) sum_i E[s_i], and the same for the output embeddings W (V, d) when they are a separate matrix.

    Raises:
        TemplateError: ``source_ids`` is empty (the text encodes to no token).
    """
    if not source_ids:
        raise TemplateError('rlp.template.*_init_text encodes to no token; give a text with at least one token')
    index = torch.tensor(list(source_ids), dtype=torch.long)
    inp = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    with torch.no_grad():
        inp[tag_id] = inp[index].mean(dim=0)
        if out is not None and out.weight is not inp and out.weight.shape[0] > tag_id:
            out.weight[tag_id] = out.weight[index].mean(dim=0)
