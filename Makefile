# Two entry points on a fresh machine: `make demo` (the whole job) and `make test`.
# Both create and use the virtual environment in .venv.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CLI    := $(BIN)/python cli.py

# Data: $COVIDCT_DATA, else the team's shared copy, else ./data/COVID-CT. A second source
# (MosMed slices: $COVIDCT_SECOND_SOURCE, else the shared copy) makes the demo cross-source.
DATA ?= $(or $(COVIDCT_DATA),$(wildcard ../shared/data/covid-ct),data/COVID-CT)
SECOND_SOURCE ?= $(or $(COVIDCT_SECOND_SOURCE),$(wildcard ../shared/data/mosmed-slices))
SOURCES := --data $(DATA) $(if $(SECOND_SOURCE),--data $(SECOND_SOURCE))
# Real hospital DICOM studies, when the shared copy is there: predicted as studies at the end.
STUDIES ?= $(or $(COVIDCT_STUDIES),$(wildcard ../shared/data/dicom-studies))
# Radiologists' lesion masks, when the shared copies are there: fit trains the segmentation network on them.
LESIONS ?= $(or $(COVIDCT_LESIONS),$(wildcard ../shared/data/lesion-slices))
LESIONS_EXTRA ?= $(wildcard ../shared/data/lesion-slices-sirm)
LESION_DATA := $(if $(LESIONS),--lesion-data $(LESIONS)) $(if $(LESIONS_EXTRA),--lesion-data $(LESIONS_EXTRA))

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
# The demo's model: chosen by the both-source grouped CV AUC of bench/generalization.py
# (training data only), never by a held-out source's results.
DEMO_FIT := --clf stack --base svm,logreg --harmonize none $(LESION_DATA)

.PHONY: venv docs test test-fast demo bench-lesions bench-abstain bench-generalization bench-ood bench-recalibration bench-adaptation bench-cache-scale bench-scaleout bench-studies bench-serve-load bench-accuracy bench-variants bench-crop bench-pipeline bench-throughput bench-cold-start clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed

# The suite also runs the ray engine on a local Ray and the web service: the tests get the
# `ray` and `serve` extras.
$(VENV)/.installed-ray: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[test,ray,serve]"
	touch $@

# The suite runs on every core (pytest-xdist), a test module per worker (its module fixtures built
# once), each worker single-threaded: workers already fill the cores, and TensorFlow's and BLAS's own
# threads on top of them cost a quarter of the time in contention.
ONE_THREAD = OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
PYTEST = $(ONE_THREAD) $(BIN)/python -m pytest -n auto --dist worksteal

test: $(VENV)/.installed-ray
	$(PYTEST)

# The docs site (docs/, mkdocs-material), built strictly: a broken link fails.
$(VENV)/.installed-docs: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	touch $@

docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# Each worker builds its own session fixtures in its own temporary folders.
test-fast: $(VENV)/.installed-ray
	$(PYTEST) -m "not slow"

demo: venv
	@echo "== data: $(DATA) $(SECOND_SOURCE)"
	$(CLI) backbones
	$(CLI) extract $(BACKBONES) $(WEIGHTS) $(FEATURES) $(SOURCES)
	@echo "== again: everything is cached, no CNN runs"
	$(CLI) extract $(BACKBONES) $(WEIGHTS) $(FEATURES) $(SOURCES)
	@echo "== fit on every source (source-balanced weights), tuned by patient-grouped CV; the lungs and lesion network on radiologists' masks"
	$(CLI) fit $(DEMO_FIT) $(SOURCES) $(BACKBONES) $(FEATURES) --model models/demo.joblib
	@if [ -n "$(SECOND_SOURCE)" ]; then \
		echo "== the headline: leave one source out (refit without each source, score it)"; \
		$(CLI) evaluate --model models/demo.joblib --cv-by source $(SOURCES) --report-dir reports/demo-by-source \
			|| exit 1; \
	fi
	@echo "== COVID-CT's official test split (patients the model never saw; same source as training)"
	$(CLI) evaluate --model models/demo.joblib --data $(DATA) --report-dir reports/demo-test
	@echo "== predict every image under $(DATA) (training images included), with the out-of-distribution flag"
	$(CLI) predict $(DATA) --model models/demo.joblib --out predictions.csv
	@echo "== HTML report on COVID-CT's test split: heatmaps for the first 24 rows (mistakes first)"
	$(CLI) report --model models/demo.joblib --data $(DATA) --out reports/demo-test.html --heatmaps 24
	@if [ -n "$(STUDIES)" ] && [ -n "$(LESIONS)" ]; then \
		echo "== the lesion finding against the radiologists' slice labels of the hospital studies (never trained on them)"; \
		$(CLI) evaluate --model models/demo.joblib --lesion-data $(STUDIES) --report-dir reports/demo-lesions || exit 1; \
	fi
	@if [ -n "$(STUDIES)" ]; then \
		echo "== whole hospital studies (JPEG Lossless DICOM): one answer per study, opacity, severity, maps, NIfTI, SEG"; \
		$(CLI) predict $(STUDIES) --studies --model models/demo.joblib --out reports/demo-studies/slices.csv \
			$(if $(LESIONS),--lesion-maps reports/demo-studies/maps --seg) \
			&& cat reports/demo-studies/studies.csv || exit 1; \
	fi

# Lesion maps against radiologists (leave one patient out), hospital studies, leave one source out, cost.
bench-lesions: venv
	$(BIN)/python bench/lesions.py

# Answer or abstain: coverage and error among answered on the test split, held-out sources, studies, non-CT.
bench-abstain: venv
	$(BIN)/python bench/abstain.py

bench-generalization: venv
	$(BIN)/python bench/generalization.py

bench-ood: venv
	$(BIN)/python bench/ood.py

bench-recalibration: venv
	$(BIN)/python bench/recalibration.py

bench-cache-scale: venv
	$(BIN)/python bench/cache_scale.py

# Local vs ray engine img/s on this machine, and the 200k / 10M-slice projection (needs the ray extra).
bench-scaleout: $(VENV)/.installed-ray
	$(BIN)/python bench/scaleout.py

# Real hospital DICOM studies: slice AUC vs radiologists' labels, study ranking, cost per study.
bench-studies: venv
	$(BIN)/python bench/studies.py

# The web service under a bounded load: 20 clients x 10 requests on loopback.
bench-serve-load: $(VENV)/.installed-ray
	$(BIN)/python bench/serve_load.py

bench-adaptation: venv
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python bench/domain_adaptation.py

bench-accuracy: venv
	$(BIN)/python bench/accuracy.py

bench-variants: venv
	$(BIN)/python bench/feature_variants.py

bench-crop: venv
	$(BIN)/python bench/lung_crop.py
	$(BIN)/python bench/explanations.py

bench-pipeline: venv
	$(BIN)/python bench/pipeline.py

bench-cold-start: venv
	$(BIN)/python bench/cold_start.py

bench-throughput: venv
	$(BIN)/python bench/throughput.py

clean:
	rm -rf features/*.h5 models reports predictions.csv heatmaps .pytest_cache
