# convscope: the two commands of the README, and what they need.
#   make demo   the main job on this machine
#   make test   install what the tests need and run them
# torch is pinned in the same pip command as everything that depends on it: an unpinned resolve would pull a
# newer torch with gigabytes of CUDA packages.

PYTHON ?= python3
PIP := $(PYTHON) -m pip --disable-pip-version-check
TORCH := torch==2.13.0
TORCHVISION := torchvision==0.28.0
STAMP := .make
PYTEST_WORKERS ?= 2

.PHONY: demo test lint install install-test data chromium readme-table bench-train bench clean

demo: $(STAMP)/install $(STAMP)/data
	$(PYTHON) examples/demo.py

# --dist worksteal: a worker that runs out of tests takes queued ones from the other, so a long test late in the
# run does not leave a core idle.
test: lint $(STAMP)/data $(STAMP)/chromium
	$(PYTHON) -m pytest -n $(PYTEST_WORKERS) --dist worksteal --timeout=1200 tests

# ruff's rule set is in pyproject.toml (pyflakes, pycodestyle, isort, bugbear, pyupgrade); the import contract
# (the layers' arrows) is tests/test_import_contract.py, run by `make test`.
lint: $(STAMP)/install-test
	$(PYTHON) -m ruff check src tests benchmarks tools examples

install: $(STAMP)/install
install-test: $(STAMP)/install-test
data: $(STAMP)/data
chromium: $(STAMP)/chromium

$(STAMP)/install: pyproject.toml
	$(PIP) install --quiet "$(TORCH)" numpy -e ".[lab]"
	@mkdir -p $(STAMP) && touch $@

# timm (for the parity tests) needs torchvision; 0.28.0 is the build that matches torch 2.13.0.
$(STAMP)/install-test: pyproject.toml
	$(PIP) install --quiet "$(TORCH)" "$(TORCHVISION)" numpy -e ".[lab,test]"
	@mkdir -p $(STAMP) && touch $@ $(STAMP)/install

# Fashion-MNIST from Debian (no download at run time): /usr/share/datasets/fashion-mnist/
$(STAMP)/data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
	fi
	@test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
	@mkdir -p $(STAMP) && touch $@

# Headless Chromium renders the efficiency lab's HTML reports in tests/analysis/test_report.py (Debian package).
$(STAMP)/chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
		apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; \
	fi
	@command -v chromium >/dev/null
	@mkdir -p $(STAMP) && touch $@

# Training benchmarks (results with the machine in benchmarks/results/): the engine against a bare PyTorch loop,
# the data-loader setups, and dtype / layout / threads for the demo model.
bench-train: $(STAMP)/install $(STAMP)/data
	$(PYTHON) benchmarks/engine_overhead.py
	$(PYTHON) benchmarks/data_loading.py
	$(PYTHON) benchmarks/train_settings.py

# Any benchmark by name (benchmarks/README.md): make bench NAME=reparam_speed ARGS="--threads 1"; without NAME, the
# index. Some also need the test extras or the Fashion-MNIST files (tests/test_benchmarks.py keeps these lists
# in step with benchmarks/run.py).
BENCH_NEED_TEST := deploy_speed official_parity reparam_equivalence reparam_speed hybrid_latency
BENCH_NEED_DATA := data_loading loading dense small_data_cnn small_data_defaults small_data_sweep mixer_bench demo_slow_machine demo_deploy erf transfer pretrain
bench: $(STAMP)/install $(if $(filter $(BENCH_NEED_TEST),$(NAME)),$(STAMP)/install-test) \
		$(if $(filter $(BENCH_NEED_DATA),$(NAME)),$(STAMP)/data)
	$(PYTHON) benchmarks/run.py $(if $(NAME),$(NAME) $(ARGS),--list)

# Regenerate the README's model table from the registry (tests/test_readme.py checks it is current).
readme-table: $(STAMP)/install
	$(PYTHON) tools/update_readme.py

clean:
	rm -rf $(STAMP) .pytest_cache build src/*.egg-info
