# Each target creates the virtualenv and installs recdebug with the pinned versions first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: demo demo-headless test clean

$(STAMP): setup.py pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p $(VENV)/share/jupyter/lab/settings  # no news toast over the notebook
	echo '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}' \
		> $(VENV)/share/jupyter/lab/settings/overrides.json
	$(VENV)/bin/jupyter lab notebooks/ --ServerApp.ip=127.0.0.1 --LabApp.news_url=None $(ROOT_FLAG)

demo-headless: $(STAMP)
	$(PY) -m recdebug.notebook.demo
	$(VENV)/bin/jupyter nbconvert --to html --execute --ExecutePreprocessor.store_widget_state=False \
		--ExecutePreprocessor.timeout=300 --output-dir out/notebooks notebooks/*.ipynb

test: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(VENV)/bin/lint-imports  # the layers (pyproject.toml): each imports only those below it
	$(PY) -m pytest -q tests --ignore=tests/test_generative.py
	$(PY) -m pytest -q -n 2 --dist worksteal tests/test_generative.py

clean:
	rm -rf $(VENV) *.egg-info
