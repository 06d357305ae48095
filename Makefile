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
# digits (README, "Scaling"); the plots and tables land in docs/. Each half
# runs as two shards side by side, so that one compiles while the other
# steps, then merges them (`report`); shard 1 skips the cost estimate.
SCALING_WORKDIR ?= runs/scaling-demo
SCALING := $(PY) -m efficientnet_jax.scaling
# B0's seven stages with one block each (its stem, head and rounding), so
# that the 11 runs fit 10 minutes; SCALING_BASE=b0 runs B0 itself.
SCALING_BASE ?= b0-1
SCALING_BLOCKS_b0-1 := --config.base_blocks="('r1_k3_s11_e1_i32_o16_se0.25', \
	'r1_k3_s22_e6_i16_o24_se0.25', 'r1_k5_s22_e6_i24_o40_se0.25', \
	'r1_k3_s22_e6_i40_o80_se0.25', 'r1_k5_s11_e6_i80_o112_se0.25', \
	'r1_k5_s22_e6_i112_o192_se0.25', 'r1_k3_s11_e6_i192_o320_se0.25')"
SCALING_FLAGS := --config=configs/scaling.py:b0 $(SCALING_BLOCKS_$(SCALING_BASE)) \
	--config.num_train_steps=450
SEARCH_FLAGS := $(SCALING_FLAGS) --config.num_seeds=2 \
	--config.search.step=0.5 --config.search.tolerance=0.15 \
	--workdir=$(SCALING_WORKDIR)/search
STUDY_FLAGS := $(SCALING_FLAGS) --config.num_seeds=1 \
	--config.study.mac_targets='(2.0,)' \
	--config.study.search_workdir=$(SCALING_WORKDIR)/search \
	--workdir=$(SCALING_WORKDIR)/study
# Runs `$(1) --shard=0/2` and `$(1) --shard=1/2` at once; fails if either does.
two_shards = $(1) --shard=0/2 & \
	$(1) --shard=1/2 --config.timing_steps=0; one=$$?; \
	wait $$!; other=$$?; test $$one = 0 && test $$other = 0
scaling-demo: $(STAMP)
	$(call two_shards,$(SCALING) search $(SEARCH_FLAGS))
	$(SCALING) report search $(SEARCH_FLAGS)
	$(call two_shards,$(SCALING) study $(STUDY_FLAGS))
	$(SCALING) report study $(STUDY_FLAGS)
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
