# Everything a fresh machine needs: `make demo` and `make test` create .venv and install into it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= data/synthetic
# torch/torchvision pinned to the releases the reference machine caches locally (CPU here, CUDA on clusters).
TORCH  ?= torch==2.14.1 torchvision==0.29.1
# A machine without a GPU: `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the
# CPU wheels of torch/torchvision (PyPI's CUDA build makes .venv about 7 GB). Empty: the default index.
TORCH_INDEX ?=

.PHONY: install demo test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(PY) -m pip install -q -e '.[test,export,h36m,video,dashboard]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/hpe-ray demo --data $(DATA)

test: install
	$(PY) -m pytest -q --durations=15

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) data/ runs/ .pytest_cache
