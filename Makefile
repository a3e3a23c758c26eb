# disco: `make demo` shows it, `make test` proves it. Both install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PREFIX ?= /usr/local
INSTALL_DIR ?= /opt/disco
DEMO := .demo
COMMANDS := disco disco-param disco-ball disco-fs-mount disco-fs-init disco-fs-diff \
	disco-fs-unmount disco-sh-shell disco-sh-exec disco-server
# What disco stands on (DESIGN §11), what makes the virtual environment, and the sshd the
# tests start on loopback.
APT_PACKAGES := bash coreutils diffutils util-linux rsync openssh-client python3 python3-venv \
	openssh-server

# What the tests need besides: a real browser for the HTML report's test.
TEST_APT_PACKAGES := chromium

.PHONY: demo test lint bench install system-deps test-deps venv clean

demo: venv
	rm -rf $(DEMO)
	bash examples/demo.sh $(BIN) $(CURDIR)/$(DEMO)

test: lint test-deps
	$(BIN)/pytest

test-deps:
	@$(MAKE) -s system-deps APT_PACKAGES="$(TEST_APT_PACKAGES)"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: venv
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# disco for the whole system: its own virtual environment, commands linked into PREFIX.
install: system-deps
	@[ "$$(id -u)" = 0 ] || { echo "error: make install needs root; run it with sudo"; exit 1; }
	$(PYTHON) -m venv $(INSTALL_DIR)
	$(INSTALL_DIR)/bin/pip install -q --upgrade .
	for c in $(COMMANDS); do ln -sf $(INSTALL_DIR)/bin/$$c $(PREFIX)/bin/; done

system-deps:
	@command -v dpkg-query >/dev/null || { echo "not Debian: make sure these are installed: $(APT_PACKAGES)"; exit 0; }; \
	missing=$$(for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	[ -z "$$missing" ] && exit 0; \
	[ "$$(id -u)" = 0 ] || { echo "error: missing packages:" $$missing "; install them with apt-get as root"; exit 1; }; \
	echo "installing:" $$missing; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  -o DPkg::Lock::Timeout=600 $$missing >/dev/null

venv: system-deps $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) $(DEMO) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
