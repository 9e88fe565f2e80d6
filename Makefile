# Two entry points on a fresh machine: `make demo` (the whole job) and `make test`.
# Both create and use the virtual environment in .venv.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CLI    := $(BIN)/python cli.py

# Data: $COVIDCT_DATA, else the team's shared copy, else ./data/COVID-CT.
DATA ?= $(or $(COVIDCT_DATA),$(wildcard ../shared/data/covid-ct),data/COVID-CT)

# Offline pretrained weights, used automatically when present (never required):
# without them, keras downloads its ImageNet files (needs internet).
SHARED_WEIGHTS ?= ../shared/keras/models
MNV2_FILE := $(wildcard $(SHARED_WEIGHTS)/mobilenet_v2_1.0_224_imagenet_from_coral_tf2_ptq_no_top.h5)
MNV1_FILE := $(wildcard $(SHARED_WEIGHTS)/mobilenet_v1_1.0_224_imagenet_from_coral_quant_no_top.h5)
WEIGHTS := $(if $(MNV2_FILE),--weights mobilenetv2=$(MNV2_FILE)) $(if $(MNV1_FILE),--weights mobilenet=$(MNV1_FILE))
BACKBONES := -b mobilenetv2 -b mobilenet
CLASSIFIERS := svm logreg rf xgboost

.PHONY: venv test demo clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/python -m pytest

demo: venv
	@echo "== data: $(DATA)"
	$(CLI) backbones
	$(CLI) extract $(BACKBONES) $(WEIGHTS) --data $(DATA)
	@echo "== again: everything is cached, no CNN runs"
	$(CLI) extract $(BACKBONES) $(WEIGHTS) --data $(DATA)
	@for clf in $(CLASSIFIERS); do \
		echo "== fit $$clf (train+val, patient-grouped CV), then evaluate on the test split"; \
		$(CLI) fit --clf $$clf --data $(DATA) $(BACKBONES) || exit 1; \
		$(CLI) evaluate --model models/$$clf.joblib --data $(DATA) || exit 1; \
	done
	@echo "== predict every image under $(DATA) with the last model (training images included)"
	$(CLI) predict $(DATA) --out predictions.csv

clean:
	rm -rf features/*.h5 models predictions.csv .pytest_cache
