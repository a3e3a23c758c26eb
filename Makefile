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

# What the tests need besides: a real browser for the HTML report's test, strace for the
# order of a commit's flushes (test_durability.py), shellcheck for `disco lint`,
# mmdebstrap for the Debian image `disco test --image` is tested on, dpkg-dev for the
# repository of the package the upgrade tests build (tests/tiny_debs.py).
TEST_APT_PACKAGES := chromium strace shellcheck mmdebstrap dpkg-dev dnf rpm createrepo-c
# That image: a minbase Debian, built once (network allowed here only) and kept between runs.
TEST_IMAGE_DIR ?= /var/cache/disco-tests
TEST_IMAGE := $(TEST_IMAGE_DIR)/debian-minbase.tar

# The packages NOOP installs for real in tests (DESIGN §17, tests/test_packages_corpus.py):
# none installed here, each with maintainer scripts that do real work (users, alternatives,
# shells, file capabilities, diversions, units, triggers) and no daemon that talks to the
# network. `make test-debs` downloads them and the dependencies this machine lacks once,
# into a local repository that the tests serve on loopback.
CORPUS := uuid-runtime acct sysstat at tcpdump iputils-arping iputils-clockdiff \
	iputils-tracepath mtr-tiny fping traceroute gawk mksh tcsh rlwrap nvi joe mg vim-tiny \
	netcat-openbsd telnet w3m haveged irqbalance anacron logrotate screen desktop-file-utils \
	usbmuxd pcscd fcgiwrap incron vnstat debsums molly-guard lzip rename sudo cron hdparm
TEST_DEBS ?= /var/cache/disco-tests/debs

# How every target here installs $$missing: without recommended packages (chromium's
# are about 150 more on Debian 12, avahi-daemon among them: an mDNS daemon), and with a
# policy-rc.d that refuses every daemon start meanwhile, as in a chroot (one already
# there is left as it is).
APT_INSTALL = made=; [ -e /usr/sbin/policy-rc.d ] || { printf '\#!/bin/sh\nexit 101\n' \
	  > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made=1; }; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  --no-install-recommends -o DPkg::Lock::Timeout=600 $$missing >/dev/null; \
	rc=$$?; [ -z "$$made" ] || rm -f /usr/sbin/policy-rc.d; exit $$rc

.PHONY: demo test lint bench bench-deps install system-deps test-deps test-debs test-image venv clean

demo: venv
	rm -rf $(DEMO)
	bash examples/demo.sh $(BIN) $(CURDIR)/$(DEMO)

# Byte-compiled first, as `pip install` leaves an installed disco: under
# PYTHONDONTWRITEBYTECODE every disco the tests start would compile it anew (a fresh
# clone's suite here: 12:31 without, 11:21 with).
test: lint test-deps
	@$(BIN)/python -m compileall -q src/disco
	DISCO_TEST_IMAGE=$(TEST_IMAGE) $(BIN)/pytest

test-deps: test-debs
	@$(MAKE) -s system-deps APT_PACKAGES="$(TEST_APT_PACKAGES)"
	@$(MAKE) -s test-image

# Built as the tests' own apt sources say (this machine's suite); a failed build leaves no
# file and the --image test skips, saying why.
test-image:
	@[ -f $(TEST_IMAGE) ] && exit 0; \
	command -v mmdebstrap >/dev/null || { echo "no mmdebstrap: the --image test will skip"; exit 0; }; \
	[ "$$(id -u)" = 0 ] || { echo "building $(TEST_IMAGE) needs root: the --image test will skip"; exit 0; }; \
	mkdir -p $(TEST_IMAGE_DIR) && suite=$$(. /etc/os-release; echo $${VERSION_CODENAME:-stable}); \
	echo "building $(TEST_IMAGE) ($$suite, minbase)"; \
	mmdebstrap --quiet --format=tar --variant=minbase --include=passwd $$suite $(TEST_IMAGE).part \
	  && mv $(TEST_IMAGE).part $(TEST_IMAGE) || { rm -f $(TEST_IMAGE).part; \
	  echo "could not build $(TEST_IMAGE): the --image test will skip"; }

test-debs:
	@bash tests/make_test_debs.sh "$(TEST_DEBS)" $(CORPUS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# CFEngine 3 and Puppet 7 are the peers the engine bench measures against
# (bench/bench_engine.py); cf-serverd listens on the network, the puppet agent calls its
# server: APT_INSTALL keeps their daemons from starting.
# Byte-compiled first, as `pip install` leaves an installed disco: an editable one under
# PYTHONDONTWRITEBYTECODE would compile every module at every start (~0.2 s).
BENCH_APT_PACKAGES := cfengine3 puppet

bench: venv bench-deps
	@$(BIN)/python -m compileall -q src/disco
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

bench-deps:
	@missing=$$(for p in $(BENCH_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	[ -z "$$missing" ] && exit 0; \
	command -v apt-get >/dev/null || { echo "no apt-get: install $$missing for bench_engine"; exit 0; }; \
	[ "$$(id -u)" = 0 ] || { echo "error: installing $$missing needs root"; exit 1; }; \
	$(APT_INSTALL)

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
	$(APT_INSTALL)

venv: system-deps $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) $(DEMO) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
