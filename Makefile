# Two entry points for a fresh clone: `make demo` (the offline main job) and
# `make test` (the linter, then the suite, printing its 15 slowest tests).
# Both create .venv and (re)install requirements.txt when it is missing or
# older than requirements.txt.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo

.PHONY: demo scaling-demo test venv summary clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) train.py --config=configs/demo.py --workdir=$(WORKDIR)
	$(PY) eval.py --config=configs/demo.py --checkpoint=$(WORKDIR)

# A small compound-coefficient search and a Figure 8 study on the offline
# digits (README, "Scaling"); the plots and tables land in docs/.
SCALING_WORKDIR ?= runs/scaling-demo
SCALING_FLAGS := --config=configs/scaling.py:b0 --config.num_train_steps=450 \
	--config.num_seeds=2
scaling-demo: $(STAMP)
	$(PY) -m efficientnet_jax.scaling search $(SCALING_FLAGS) \
	  --config.search.step=0.5 --config.search.tolerance=0.15 \
	  --workdir=$(SCALING_WORKDIR)/search
	$(PY) -m efficientnet_jax.scaling study $(SCALING_FLAGS) \
	  --config.num_seeds=1 --config.study.mac_targets='(2.0,)' \
	  --config.study.search_workdir=$(SCALING_WORKDIR)/search \
	  --workdir=$(SCALING_WORKDIR)/study
	cp $(SCALING_WORKDIR)/search/search.png docs/scaling-search.png
	cp $(SCALING_WORKDIR)/search/results.md docs/scaling-search.md
	cp $(SCALING_WORKDIR)/study/study.png docs/scaling-study.png
	cp $(SCALING_WORKDIR)/study/results.md docs/scaling-study.md

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests

summary: $(STAMP)
	$(PY) -m efficientnet_jax.summary

clean:
	rm -rf $(VENV) runs
