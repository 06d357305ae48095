# Two entry points for a fresh clone: `make demo` (the offline main job) and
# `make test` (the linter, then the suite, printing its 15 slowest tests).
# Both create .venv and (re)install requirements.txt when it is missing or
# older than requirements.txt.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo

.PHONY: demo test venv summary bench clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) train.py --config=configs/demo.py --workdir=$(WORKDIR)
	$(PY) eval.py --config=configs/demo.py --checkpoint=$(WORKDIR)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests

summary: $(STAMP)
	$(PY) -m efficientnet_jax.summary

clean:
	rm -rf $(VENV) runs
