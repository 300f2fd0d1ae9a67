# knowd — the two commands a new user runs are `make demo` and `make test`.
# Both install what is missing (scripts/install-deps), then build.

BUILD_DIR ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps configure build test test-gpu demo bench model format format-check clean

all: build

deps:
	@scripts/install-deps

configure: deps
	@cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS)

# The whole test suite. GPU tests (label gpu) skip themselves when no device is present. The
# long fault-injection runs (label fault) are left to test-fault; their short variants run here.
test: format-check build
	@cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 1200 -LE fault

test-gpu: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -L gpu

# Fault injection (docs/testing.md): the memory bank under 100 kill -9 rounds and a full disk.
.PHONY: test-fault
test-fault: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -L fault --timeout 1800

demo: build
	@scripts/demo $(BUILD_DIR)

bench: build
	@scripts/bench $(BUILD_DIR)

# Rebuilds models/knowd-tiny from nothing with knowd-train (fixed seeds; about 9 h on one or two
# cores, stage by stage in scripts/make-model). Work files go to $(BUILD_DIR)/model-work.
model: build
	@scripts/make-model $(BUILD_DIR)

# libFuzzer targets (tests/fuzz/README.md): a clang-14 build in build-fuzz, then each target runs
# 30 s over its corpus in tests/fuzz/corpus; fails when any target crashes.
.PHONY: fuzz
fuzz: deps
	@tests/fuzz/run-fuzzers build-fuzz 30

format:
	@git ls-files '*.h' '*.cc' '*.cu' '*.cuh' | xargs clang-format -i

# Formatting is part of the build: a file clang-format would change fails the check.
format-check: deps
	@git ls-files '*.h' '*.cc' '*.cu' '*.cuh' | xargs clang-format --dry-run -Werror

clean:
	rm -rf $(BUILD_DIR)
