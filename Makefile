# Two commands for a newcomer:  make demo   (score examples/ on the embedded server)
#                               make test   (install what the tests need, run them)
# and for exporting one's own checkpoints:  make install-export  (the export extra, CPU torch)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test test-fast lint bench bench-gpu soak demo-rebuild demo-olczak-rebuild serve install-export system-deps pacs-deps clean

# The Triton python-backend stub links the system libpython of the same version: all the demo needs.
LIBPYTHON = libpython$$($(PYTHON) -c 'import sys;print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
system-deps:
	@ldconfig -p | grep -q "$(LIBPYTHON).so.1.0" \
	  || (echo "installing the system libpython for the Triton python backend stub" && \
	      apt-get update -qq && apt-get install -y -qq "$(LIBPYTHON)" >/dev/null)

# The PACS tests run a real Orthanc (with its DICOMweb plug-in), dcmtk (dsrdump, dcmpschk, dcmp2pgm), and the
# independent validators: dicom3tools (dciodvfy, dcentvfy) and PixelMed's DicomSRValidator (pixelmed-apps).
# Only `make test` (and so CI) installs them.
PACS_PACKAGES := orthanc orthanc-dicomweb dcmtk dicom3tools pixelmed-apps
pacs-deps:
	@missing="$$(for p in $(PACS_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done)"; \
	  test -z "$$missing" || (echo "installing for the PACS tests:" $$missing && \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null)

$(VENV)/.server: pyproject.toml | system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e ".[server]"
	@touch $@

# torch is pinned to its CPU build, installed first: `pip install 'fracscan[export]'` alone pulls the CUDA
# build with about 20 CUDA wheels.
TORCH_CPU := torch==2.13.0
$(VENV)/.export: $(VENV)/.server
	$(PIP) install "$(TORCH_CPU)"
	$(PIP) install -e ".[server,export]"
	@touch $@

# The export extra (fracscan export from PyTorch checkpoints), with the CPU build of torch.
install-export: $(VENV)/.export
	@echo "export extra installed: $$($(PY) -c 'import torch; print("torch", torch.__version__)')"

$(VENV)/.test: $(VENV)/.export | pacs-deps
	$(PIP) install -e ".[server,export,evaluate,pacs,test]"
	@touch $@

demo: $(VENV)/.server
	$(VENV)/bin/fracscan predict examples/ --embedded --format table
	@echo
	@echo "fracscan is installed in $(VENV)/bin: run 'source $(VENV)/bin/activate' (then 'fracscan --help'),"
	@echo "or call $(VENV)/bin/fracscan directly."

test: $(VENV)/.test
	$(PY) -m pytest -q

# The quick loop: no training, no torch-marked tests, nothing marked slow.
test-fast: $(VENV)/.test
	$(PY) -m pytest -q -m "not slow and not torch"

# ruff (lint + format check) over the tree; mypy (see pyproject.toml for where it is strict) and
# import-linter (the layers of docs/architecture.md, no cycles) over a tree of links that mirrors the
# installed layout (client/ is fracscan.client, ...), since neither tool reads setuptools' package-dir.
WINGS := client pacs cli export demo
lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@tree=$$(mktemp -d) && mkdir $$tree/fracscan && ln -s $(CURDIR)/fracscan/* $$tree/fracscan/ \
	  && for wing in $(WINGS); do ln -s $(CURDIR)/$$wing $$tree/fracscan/$$wing; done \
	  && (cd $$tree && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml -p fracscan \
	      && PYTHONPATH=$$tree $(CURDIR)/$(VENV)/bin/lint-imports --no-cache $(CURDIR)/pyproject.toml); \
	  status=$$?; rm -rf $$tree; exit $$status

bench: $(VENV)/.test
	$(PY) benchmarks/bench.py

# The GPU run, on a machine with an NVIDIA GPU and a CUDA build of torch (refuses with exit 2 without):
# each member's FP32 and FP16 latency and TFLOP/s against the GPU's peak, the FP16-vs-FP32 decision flips
# on the demo test split and the normalize graph on CUDA (both with onnxruntime-gpu and onnxconverter-common),
# nvImageCodec's JPEG 2000 decode when installed; ONE JSON report in $(BENCH_GPU_REPORT).
BENCH_GPU_REPORT ?= benchmarks/gpu_report.json
bench-gpu: $(VENV)/.test
	$(PY) benchmarks/bench_gpu.py --report $(BENCH_GPU_REPORT)

# Faults under load: 200 good and bad inputs through a supervised `fracscan serve` while a python stub,
# then tritonserver, is killed; every input must be answered exactly once after --resume (1-2 minutes).
soak: $(VENV)/.server
	$(PY) benchmarks/soak.py

# Regenerate the demo ensemble (synthetic data, training, export, calibration, examples).
# Trains on a GPU if the venv's torch sees one (minutes), else on the CPU (hours on 2 cores).
demo-rebuild: $(VENV)/.test
	$(PY) -m fracscan.demo.build

# Regenerate the Olczak et al. 2017 DEMO (one small VGG-16 with laterality / body part / view heads):
# synthetic exam views, training (resumable), export, calibration, held-out report (~25 min on 2 cores).
demo-olczak-rebuild: $(VENV)/.test
	$(PY) -m fracscan.demo.olczak

serve: $(VENV)/.server
	$(VENV)/bin/fracscan serve

clean:
	rm -rf $(VENV) .pytest_cache
