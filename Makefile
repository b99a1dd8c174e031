# Thin front over CMake. `make run` and `make test` are the two documented
# entry points; both install missing Debian packages first.
JOBS ?= $(shell nproc)
PY := /usr/bin/python3
BUILD := build
BUILD_ASAN := build-asan

.PHONY: all deps build build-asan run test test-egress test-docker fuzz fuzz-ci soak soak-ci bench \
	format format-check clean

all: build

deps:
	@./.ci/install-deps

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS) -- --no-print-directory

build-asan: deps
	@cmake -S . -B $(BUILD_ASAN) -DCMAKE_BUILD_TYPE=Debug -DSANDGATE_SANITIZE=ON >/dev/null
	@cmake --build $(BUILD_ASAN) -j $(JOBS) -- --no-print-directory

run: build
	@./tests/run-demo.sh $(BUILD)/sandgate

# The whole suite twice: a normal build, then under ASan+UBSan.
test: build build-asan format-check
	@echo "== unit tests (normal build)"
	@cd $(BUILD) && ctest --output-on-failure
	@echo "== unit tests (ASan+UBSan)"
	@cd $(BUILD_ASAN) && ctest --output-on-failure
	@$(MAKE) --no-print-directory fuzz-ci
	@echo "== integration tests (normal build)"
	@SANDGATE_BIN=$(CURDIR)/$(BUILD)/sandgate $(PY) -m pytest -q -p no:cacheprovider tests/integration
	@echo "== integration tests (ASan+UBSan)"
	@SANDGATE_BIN=$(CURDIR)/$(BUILD_ASAN)/sandgate SANDGATE_SANITIZED=1 $(PY) -m pytest -q -p no:cacheprovider tests/integration
	@echo "== egress tests, real network namespaces (normal build)"
	@SANDGATE_BIN=$(CURDIR)/$(BUILD)/sandgate $(PY) -m pytest -q -p no:cacheprovider tests/egress
	@echo "== egress tests, real network namespaces (ASan+UBSan)"
	@SANDGATE_BIN=$(CURDIR)/$(BUILD_ASAN)/sandgate SANDGATE_SANITIZED=1 $(PY) -m pytest -q -p no:cacheprovider tests/egress
	@$(MAKE) --no-print-directory soak-ci
	@echo "== docker image and compose stack"
	@$(PY) tests/docker/test_docker.py

# libFuzzer harnesses (clang, ASan+UBSan) from their committed corpora:
# FUZZ_SECONDS per harness; fails on any finding (tests/fuzz/README.md).
FUZZ_SECONDS ?= 60
fuzz: deps
	@./tests/fuzz/run.sh $(FUZZ_SECONDS)

# The bounded fuzz step of `make test`: every harness for FUZZ_CI_SECONDS
# (about 2.5 minutes for nine harnesses, build included, on 2 cores).
FUZZ_CI_SECONDS ?= 15
fuzz-ci: deps
	@echo "== fuzzing ($(FUZZ_CI_SECONDS) s per harness)"
	@./tests/fuzz/run.sh $(FUZZ_CI_SECONDS)

# Soak (tests/soak/README.md): mixed traffic for SOAK_SECONDS against the
# ASan+UBSan build (leak check at exit), then SOAK_VALGRIND_SECONDS against
# the normal build under valgrind. Each fails on traffic errors, fds not
# back to their start, a growing RSS, an unclean exit or any sanitizer or
# valgrind report, and prints a summary.
SOAK_SECONDS ?= 600
SOAK_VALGRIND_SECONDS ?= 60
soak: build build-asan
	@echo "== soak (ASan+UBSan build, $(SOAK_SECONDS) s)"
	@$(PY) tests/soak/soak.py --asan --binary $(BUILD_ASAN)/sandgate --seconds $(SOAK_SECONDS)
	@echo "== soak (normal build under valgrind, $(SOAK_VALGRIND_SECONDS) s)"
	@$(PY) tests/soak/soak.py --valgrind --binary $(BUILD)/sandgate --seconds $(SOAK_VALGRIND_SECONDS)

# The short soak of `make test`.
SOAK_CI_SECONDS ?= 30
soak-ci: build-asan
	@echo "== soak (ASan+UBSan build, $(SOAK_CI_SECONDS) s)"
	@$(PY) tests/soak/soak.py --asan --binary $(BUILD_ASAN)/sandgate --seconds $(SOAK_CI_SECONDS)

# The egress suite alone (needs root: network namespaces and nftables).
test-egress: build
	@SANDGATE_BIN=$(CURDIR)/$(BUILD)/sandgate $(PY) -m pytest -q -p no:cacheprovider tests/egress

test-docker: deps
	@$(PY) tests/docker/test_docker.py

# Side-by-side benchmark against nginx and HAProxy (installs them).
bench: build
	@./.ci/install-deps --bench
	@./tests/load/bench.sh

format:
	@clang-format -i $$(git ls-files --cached --others --exclude-standard 'ingress/*.[ch]' 'tests/*.[ch]')

format-check:
	@clang-format --dry-run -Werror $$(git ls-files --cached --others --exclude-standard 'ingress/*.[ch]' 'tests/*.[ch]')

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)
