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
# Multiscale pooling + flip TTA beat the plain average by 0.05-0.08 grouped-CV AUC on
# train+val (bench/feature_variants.py, BENCHMARKS.md); the CLI default stays avg.
FEATURES := --pooling multiscale --tta flip
CLASSIFIERS := svm logreg rf xgboost

.PHONY: venv test test-fast demo bench-generalization bench-ood bench-recalibration bench-accuracy bench-variants bench-crop bench-pipeline bench-throughput clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/python -m pytest

test-fast: venv
	$(BIN)/python -m pytest -m "not slow"

demo: venv
	@echo "== data: $(DATA)"
	$(CLI) backbones
	$(CLI) extract $(BACKBONES) $(WEIGHTS) $(FEATURES) --data $(DATA)
	@echo "== again: everything is cached, no CNN runs"
	$(CLI) extract $(BACKBONES) $(WEIGHTS) $(FEATURES) --data $(DATA)
	@for clf in $(CLASSIFIERS); do \
		echo "== fit $$clf (train+val, patient-grouped CV), then evaluate on the test split"; \
		$(CLI) fit --clf $$clf --data $(DATA) $(BACKBONES) $(FEATURES) || exit 1; \
		$(CLI) evaluate --model models/$$clf.joblib --data $(DATA) || exit 1; \
	done
	@echo "== the stacked ensemble: every backbone x svm/rf/xgboost, logistic meta-learner"
	$(CLI) fit --clf stack --data $(DATA) $(BACKBONES) $(FEATURES) --model models/stack.joblib
	$(CLI) evaluate --model models/stack.joblib --data $(DATA) --report-dir reports/stack-test
	@echo "== predict every image under $(DATA) with the stack (training images included)"
	$(CLI) predict $(DATA) --model models/stack.joblib --out predictions.csv
	@echo "== HTML report of the stack on the test split: heatmaps for the first 24 rows (mistakes first)"
	$(CLI) report --model models/stack.joblib --data $(DATA) --out reports/stack-test.html --heatmaps 24

bench-generalization: venv
	$(BIN)/python bench/generalization.py

bench-ood: venv
	$(BIN)/python bench/ood.py

bench-recalibration: venv
	$(BIN)/python bench/recalibration.py

bench-accuracy: venv
	$(BIN)/python bench/accuracy.py

bench-variants: venv
	$(BIN)/python bench/feature_variants.py

bench-crop: venv
	$(BIN)/python bench/lung_crop.py
	$(BIN)/python bench/explanations.py

bench-pipeline: venv
	$(BIN)/python bench/pipeline.py

bench-throughput: venv
	$(BIN)/python bench/throughput.py

clean:
	rm -rf features/*.h5 models reports predictions.csv heatmaps .pytest_cache
