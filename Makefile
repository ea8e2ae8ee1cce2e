# Two commands on a fresh machine: `make run` and `make test`. Everything they need is installed here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
HOST ?= 127.0.0.1
PORT ?= 8000
# Test files run on three workers: most tests wait on real processes (servers, sandboxes,
# browsers), so three keep two cores busy. `make test PYTEST_ARGS=` runs them in one process.
PYTEST_ARGS ?= -n 3 --dist loadfile

# command:debian-package pairs; a package is installed only when its command is missing.
GVISOR_DEBS := runsc:runsc cc:gcc cc:libc6-dev
RUN_DEBS := bwrap:bubblewrap git:git $(if $(filter gvisor,$(NIGHTSHIFT_SANDBOX)),$(GVISOR_DEBS))
# The session desktop (optional for `make run`): a path stands for a package without a command.
DESKTOP_DEBS := Xvfb:xvfb x11vnc:x11vnc matchbox-window-manager:matchbox-window-manager /usr/share/novnc/core/rfb.js:novnc
TEST_DEBS := $(RUN_DEBS) $(GVISOR_DEBS) redis-server:redis-server chromium:chromium \
	skopeo:skopeo umoci:umoci buildah:buildah docker-registry:docker-registry \
	mmdebstrap:mmdebstrap busybox:busybox-static $(DESKTOP_DEBS)


.PHONY: run test install lint typecheck bench system-deps-run system-deps-test redis clean ide ide-for-tests

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

define apt_missing
	@missing=""; for pair in $(1); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || [ -e "$$cmd" ] || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q --no-install-recommends $$missing >/dev/null; }; \
	fi
endef

system-deps-run:
	$(call apt_missing,$(RUN_DEBS))

system-deps-test:
	$(call apt_missing,$(TEST_DEBS))

# Tests use the machine's Redis on 127.0.0.1:6379; start one when none answers.
redis: system-deps-test
	@if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then \
	  echo "starting redis-server on 127.0.0.1:6379"; \
	  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null; \
	  for i in $$(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break; sleep 0.1; done; \
	fi

# Sandbox disk quotas need root (a loop-mounted disk per sandbox): without it, say so and go without.
NO_QUOTA := $(if $(SUDO),$(if $(NIGHTSHIFT_SANDBOX_DISK_MB),,NIGHTSHIFT_SANDBOX_DISK_MB=0))

run: $(STAMP) system-deps-run
	$(BIN)/nightshift db upgrade
	$(if $(NO_QUOTA),@echo "not root: sandboxes run without a disk quota (NIGHTSHIFT_SANDBOX_DISK_MB=0)")
	NIGHTSHIFT_AUTH=$${NIGHTSHIFT_AUTH:-local} $(NO_QUOTA) $(BIN)/nightshift serve --host $(HOST) --port $(PORT)

# The suite drives real code-server when it can be installed (about a minute, once); if the npm
# registry cannot be reached its browser test skips with the reason, the rest still runs.
ide-for-tests:
	@$(MAKE) --no-print-directory ide || echo "code-server could not be installed: tests/web/test_ide_browser.py skips its real-code-server test"

test: $(STAMP) system-deps-test redis ide-for-tests
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check app workers images integrations infra tests
	$(BIN)/ruff format --check app workers images integrations infra tests

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy infra/modal/nightshift_modal.py

# VS Code in the browser (NIGHTSHIFT_IDE=1): code-server from the npm registry, installed under
# /usr, which local sandboxes see read-only. Its install scripts would download ripgrep from
# GitHub, so they are skipped: Debian's ripgrep stands in, and the native modules are rebuilt.
IDE_VERSION ?= 4.100.3
IDE_DIR ?= /usr/local/lib/nightshift-ide
IDE_BIN ?= /usr/local/bin/code-server
ide:
	$(call apt_missing,node:nodejs npm:npm rg:ripgrep g++:g++ make:make)
	@if [ -x $(IDE_DIR)/node_modules/.bin/code-server ] && \
	  [ "$$($(IDE_DIR)/node_modules/.bin/code-server --version 2>/dev/null | grep -v ' info ' | head -1 | cut -d' ' -f1)" = "$(IDE_VERSION)" ]; then \
	  echo "code-server $(IDE_VERSION) is installed in $(IDE_DIR)"; \
	else \
	  $(SUDO) mkdir -p $(IDE_DIR) && \
	  $(SUDO) npm install --prefix $(IDE_DIR) --ignore-scripts --no-audit --no-fund --omit=dev \
	    code-server@$(IDE_VERSION) >/dev/null && \
	  cd $(IDE_DIR)/node_modules/code-server && \
	  ( cd lib/vscode && $(SUDO) npm install --ignore-scripts --no-audit --no-fund --omit=dev >/dev/null ) && \
	  for d in $$(find . -path '*/@vscode/ripgrep' -type d); do \
	    $(SUDO) mkdir -p $$d/bin && $(SUDO) ln -sf "$$(command -v rg)" $$d/bin/rg; done && \
	  $(SUDO) npm rebuild --prefix $(IDE_DIR) argon2 >/dev/null 2>&1; \
	  for m in $$(find lib/vscode -name binding.gyp -not -path '*/test/*' -printf '%h\n'); do \
	    ( cd $$m && $(SUDO) npx --yes node-gyp rebuild >/dev/null 2>&1 || echo "note: $$m did not build" ); done; \
	  $(SUDO) ln -sf $(IDE_DIR)/node_modules/.bin/code-server $(IDE_BIN) && \
	  $(IDE_BIN) --version | grep -v ' info ' | head -1; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
