# Two commands for a fresh machine: `make run` (set up and serve) and `make test` (set up and test).
HOST ?= 127.0.0.1
PORT ?= 8000
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench setup migrate clean

run: setup
	$(PY) manage.py ensure_admin
	$(PY) manage.py serve --host $(HOST) --port $(PORT)

# The scale-out path (PostgreSQL + Redis) runs against the servers on this machine.
SCALEOUT_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
SCALEOUT_REDIS_URL ?= redis://127.0.0.1:6379/0

# The SQLite part runs on every core (pytest-xdist, a module per worker at a time); TEST_WORKERS=0
# runs it in one process.
TEST_WORKERS ?= auto

test: setup
	$(PY) -m pytest -m "not scaleout" -n $(TEST_WORKERS)
	CORTEX_DATABASE_URL=$(SCALEOUT_DATABASE_URL) CORTEX_REDIS_URL=$(SCALEOUT_REDIS_URL) \
		$(PY) -m pytest -m scaleout

bench: setup
	$(PY) -m bench.run

setup: $(STAMP) migrate

$(STAMP): requirements.txt
	@test -x $(PY) || $$(scripts/find-python) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

migrate: $(STAMP)
	$(PY) manage.py migrate --no-input -v 0

clean:
	rm -rf $(VENV) var
