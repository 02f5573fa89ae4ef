# critneuron: `make book` builds the book (the shipped results; PROFILE=quick computes a short
# profile from scratch), `make test` runs the tests; both set up .venv first.
# The data root comes from $CRITNEURON_DATA (default ./data; torchvision downloads what is missing).

PYTHON ?= python3
VENV ?= .venv
PROFILE ?= shipped
STAMP := $(VENV)/.critneuron-installed

.PHONY: setup test book clean

setup: $(STAMP)

# Reinstall only when pyproject.toml changes (or the venv is new).
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[dev]'
	touch $(STAMP)

test: setup
	$(VENV)/bin/pytest -q

book: setup
	$(VENV)/bin/critneuron book --profile $(PROFILE)

clean:
	rm -rf book/_build .pytest_cache
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
