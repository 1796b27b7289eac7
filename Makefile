# Two stages: `make extract` (frozen CNN -> HDF5 feature cache), `make classify` (heads on the cache).
# The first target you run creates .venv and installs the project into it.

PYTHON    ?= python3
VENV      ?= .venv
BIN       ?= $(VENV)/bin
STAMP     := $(VENV)/.installed
DATA_DIR  ?=

# stage one (empty: the command line's default)
DATASET   ?= digits
NAME      ?=
BACKBONE  ?= efficientnet_lite0
LAYERS    ?= pool
POOL      ?= avg
CROPS     ?= 1
RES       ?=
DTYPE     ?= float16
BATCH     ?=
DEVICE    ?= auto
ENGINE    ?= local
WORKERS   ?=
RUNTIME   ?= auto
FINGERPRINT ?= stat
LIMIT     ?=
SKIP_BAD  ?=
FORCE     ?=
SHARD_ROWS ?=
TEST_FRACTION ?=

# stage two
MODEL     ?= svm
LAYER     ?= pool
C         ?=
TRAIN_SIZE?=
SHOTS     ?=
HIDDEN    ?=
DROPOUT   ?=
WEIGHT_DECAY ?=
EPOCHS    ?=
NEIGHBORS ?=
DIM       ?=
TRANSFORM ?=
REPEATS   ?=
RESPLIT   ?=
SEED      ?= 0
VAL_SIZE  ?=
POINTS    ?=
JOBS      ?=
CACHE     ?=
SKIP_EXISTING ?=

# q: one shell word, whatever the value holds (spaces, quotes); opt: an option if given
q = '$(subst ','\'',$(1))'
opt = $(if $(strip $(2)),$(1) $(call q,$(2)))
flag = $(if $(filter 1 yes true,$(2)),$(1))

EXTRACT_ARGS = --dataset $(call q,$(DATASET)) --backbone $(call q,$(BACKBONE)) \
	--layers $(call q,$(LAYERS)) --pool $(call q,$(POOL)) --crops $(call q,$(CROPS)) \
	--dtype $(call q,$(DTYPE)) --device $(call q,$(DEVICE)) --engine $(call q,$(ENGINE)) \
	--runtime $(call q,$(RUNTIME)) \
	--fingerprint $(call q,$(FINGERPRINT)) $(call opt,--name,$(NAME)) \
	$(call opt,--batch-size,$(BATCH)) $(call opt,--workers,$(WORKERS)) \
	$(call opt,--data-dir,$(DATA_DIR)) $(call opt,--res,$(RES)) $(call opt,--limit,$(LIMIT)) \
	$(call opt,--shard-rows,$(SHARD_ROWS)) $(call opt,--test-fraction,$(TEST_FRACTION)) \
	$(call opt,--seed,$(SEED)) $(call flag,--skip-bad,$(SKIP_BAD)) $(call flag,--force,$(FORCE))

# Stage two narrows DATASET= by a cache option only where it is given on the command line.
given = $(if $(and $(filter command line,$(origin $(2))),$(strip $($(2)))),$(1) $(call q,$($(2))))
CACHE_OPTIONS = $(call given,--backbone,BACKBONE) $(call given,--res,RES) \
	$(call given,--crops,CROPS) $(call given,--pool,POOL) $(call given,--dtype,DTYPE)
SOURCE = $(if $(strip $(CACHE)),--cache $(call q,$(CACHE)),--dataset $(call q,$(DATASET)) \
	$(CACHE_OPTIONS))

CLASSIFY_ARGS = $(SOURCE) --model $(call q,$(MODEL)) --layer $(call q,$(LAYER)) --seed $(SEED) \
	$(call opt,--data-dir,$(DATA_DIR)) $(call opt,--C,$(C)) $(call opt,--train-size,$(TRAIN_SIZE)) \
	$(call opt,--shots,$(SHOTS)) $(call opt,--hidden,$(HIDDEN)) $(call opt,--dropout,$(DROPOUT)) \
	$(call opt,--weight-decay,$(WEIGHT_DECAY)) $(call opt,--epochs,$(EPOCHS)) \
	$(call opt,--neighbors,$(NEIGHBORS)) --engine $(call q,$(ENGINE)) $(call opt,--jobs,$(JOBS)) \
	$(call opt,--dim,$(DIM)) $(call opt,--transform,$(TRANSFORM)) \
	$(call opt,--repeats,$(REPEATS)) $(call opt,--resplit,$(RESPLIT)) \
	$(call opt,--val-size,$(VAL_SIZE)) \
	$(call flag,--skip-existing,$(SKIP_EXISTING))

TSNE_ARGS = $(SOURCE) --layer $(call q,$(LAYER)) --seed $(SEED) $(call opt,--points,$(POINTS)) \
	$(call opt,--data-dir,$(DATA_DIR))

# the source experiments (recipes/*.sh), in an order that builds each cache once
RECIPES   := iorga durr pictures depth hertel lite2

.PHONY: install demo extract layers list classify results tsne test lint bench-extract bench-classify clean \
	reproduce results-page

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,openvino]'
	touch $@

demo: $(STAMP)  ## offline: extract the bundled digits with the embedded default backbone, then fit a linear SVM
	$(MAKE) --no-print-directory extract DATASET=digits
	$(MAKE) --no-print-directory classify DATASET=digits MODEL=svm

extract: $(STAMP)
	$(BIN)/python -m featcache.extract run $(EXTRACT_ARGS)

layers: $(STAMP)
	$(BIN)/python -m featcache.extract layers --backbone $(BACKBONE) $(call opt,--res,$(RES))

list: $(STAMP)
	$(BIN)/python -m featcache.extract list

classify: $(STAMP)
	$(BIN)/python -m featcache.classify fit $(CLASSIFY_ARGS)

results: $(STAMP)
	$(BIN)/python -m featcache.classify results $(call opt,--data-dir,$(DATA_DIR)) $(if $(filter command line,$(origin DATASET)),--dataset $(call q,$(DATASET)))

tsne: $(STAMP)
	$(BIN)/python -m featcache.classify tsne $(TSNE_ARGS)

reproduce: $(addprefix reproduce-,$(RECIPES))  ## every recipe, then docs/results.md
	$(MAKE) --no-print-directory results-page

reproduce-%: $(STAMP)  ## one recipe: make reproduce-durr
	@test -f recipes/$*.sh || { echo "unknown recipe '$*'; valid: $(RECIPES)" >&2; exit 2; }
	PY=$(BIN)/python DATA_DIR=$(or $(DATA_DIR),data) bash recipes/$*.sh

results-page: $(STAMP)  ## regenerate docs/results.md from the recipes' runs
	$(BIN)/python recipes/report.py --data-dir $(or $(DATA_DIR),data)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench-extract: $(STAMP)
	$(BIN)/python benchmarks/bench_extract.py

bench-classify: $(STAMP)
	$(BIN)/python benchmarks/bench_classify.py $(CACHE)

clean:
	rm -rf $(VENV) build *.egg-info
