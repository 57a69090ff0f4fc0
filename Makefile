# Set-up and entry points. `make test` and `make demo` create the virtual environment when it is missing.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	TOKENIZERS_PARALLELISM=false $(PY) -m pytest tests $(PYTEST_ARGS)

demo: $(STAMP)
	TOKENIZERS_PARALLELISM=false $(PY) -m pipeline.demo

bench: $(STAMP)
	TOKENIZERS_PARALLELISM=false $(PY) bench/prepare.py

clean:
	rm -rf $(VENV) build *.egg-info
