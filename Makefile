# Everything runs inside a local virtual environment that is created on first use and reused.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SCENE := examples/hokkaido_iburi_2018_rgb.tif

.PHONY: install test lint demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check landslide_cli tests benchmarks

test: $(STAMP) lint
	OMP_NUM_THREADS=2 $(BIN)/pytest -q

# map landslides in the bundled real scene with the embedded default model
demo: $(STAMP)
	mkdir -p out
	$(BIN)/landslide predict $(SCENE) --out out/hokkaido_slides.gpkg \
		--quicklook out/hokkaido_slides.png --min-area 20 --overwrite

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
