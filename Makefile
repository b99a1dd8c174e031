# Thin front over CMake. `make run` and `make test` are the two documented
# entry points; both install missing Debian packages first.
JOBS ?= $(shell nproc)
PY := /usr/bin/python3
BUILD := build
BUILD_ASAN := build-asan

.PHONY: all deps build build-asan run test test-docker fuzz bench format format-check clean

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
	@echo "== integration tests (normal build)"
	@SANDGATE_BIN=$(CURDIR)/$(BUILD)/sandgate $(PY) -m pytest -q -p no:cacheprovider tests/integration
	@echo "== integration tests (ASan+UBSan)"
	@SANDGATE_BIN=$(CURDIR)/$(BUILD_ASAN)/sandgate SANDGATE_SANITIZED=1 $(PY) -m pytest -q -p no:cacheprovider tests/integration
	@echo "== docker image and compose stack"
	@$(PY) tests/docker/test_docker.py

# libFuzzer harnesses (clang, ASan+UBSan): FUZZ_SECONDS per harness.
FUZZ_SECONDS ?= 60
fuzz: deps
	@./tests/fuzz/run.sh $(FUZZ_SECONDS)

test-docker: deps
	@$(PY) tests/docker/test_docker.py

# Side-by-side benchmark against nginx and HAProxy (installs them).
bench: build
	@./.ci/install-deps --bench
	@./tests/load/bench.sh

format:
	@clang-format -i $$(git ls-files 'ingress/*.[ch]' 'tests/*.[ch]')

format-check:
	@clang-format --dry-run -Werror $$(git ls-files 'ingress/*.[ch]' 'tests/*.[ch]')

clean:
	rm -rf $(BUILD) $(BUILD_ASAN)
