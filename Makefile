# knowd — the two commands a new user runs are `make demo` and `make test`.
# Both install what is missing (scripts/install-deps), then build.

BUILD_DIR ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

.PHONY: all deps configure build test test-gpu demo bench model docs format format-check clean

all: build

deps:
	@scripts/install-deps

configure: deps
	@cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS)

# The whole test suite. GPU tests (label gpu) skip themselves when no device is present. The
# long fault-injection runs (label fault) are left to test-fault; their short variants run here.
# The container image test (label image: root and Debian's archive) is test-image.
test: format-check build
	@cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 1200 -LE 'fault|image'

test-gpu: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -L gpu

# Fault injection (docs/testing.md): the memory bank under 100 kill -9 rounds and a full disk.
.PHONY: test-fault
test-fault: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -L fault --timeout 1800

# Sanitizer builds (docs/testing.md): every target instrumented, in their own build directories,
# CPU only. A report fails the test: the first one stops the process (halt_on_error, UBSan
# unrecoverable) with exit code 86, which no knowd program uses, and tests/daemon's helper fails
# a test whose daemon logged one. Suppressions: tests/sanitizers/*.supp, each entry explained.
ASAN_DIR ?= build-asan
TSAN_DIR ?= build-tsan
SAN_SUPP := $(CURDIR)/tests/sanitizers
SAN_CMAKE = -G Ninja -DCMAKE_BUILD_TYPE=Release -DKNOWD_CUDA=OFF -DKNOWD_WERROR=OFF $(CMAKE_FLAGS)
ASAN_OPTS = halt_on_error=1:exitcode=86:detect_leaks=1:detect_stack_use_after_return=1
ASAN_ENV = ASAN_OPTIONS=$(ASAN_OPTS):check_initialization_order=1:strict_string_checks=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:exitcode=86:suppressions=$(SAN_SUPP)/ubsan.supp \
	LSAN_OPTIONS=suppressions=$(SAN_SUPP)/lsan.supp:print_suppressions=0
# OMP_THREAD_LIMIT=1: Debian's libgomp is not instrumented, so the ordering its barriers give a
# parallel region's workers is invisible to TSan; one OpenMP thread keeps the reports knowd's.
TSAN_ENV = TSAN_OPTIONS=halt_on_error=1:exitcode=86:second_deadlock_stack=1:suppressions=$(SAN_SUPP)/tsan.supp \
	OMP_THREAD_LIMIT=1
# What test-sanitize-quick and test-tsan build: the unit tests of tests/serve, tests/storage and
# tests/client; for TSan every test of those and tests/daemon, with the binaries they start.
QUICK_TARGETS = serve_config_test auth_test document_rules_test request_checks_test \
	scheduler_test metrics_test memory_bank_test bank_recovery_test latent_codec_test crash_test \
	storage_crash_child full_disk_test session_store_test client_test document_source_test
TSAN_TARGETS = tests/serve/all tests/storage/all tests/client/all tests/daemon/all

.PHONY: test-asan
test-asan: deps
	@cmake -S . -B $(ASAN_DIR) $(SAN_CMAKE) -DKNOWD_SANITIZE=address >/dev/null
	@cmake --build $(ASAN_DIR) -j $(JOBS)
	@cd $(ASAN_DIR) && $(ASAN_ENV) ctest --output-on-failure -j $(JOBS) --timeout 3600 -LE 'fault|image'

.PHONY: test-tsan
test-tsan: deps
	@cmake -S . -B $(TSAN_DIR) $(SAN_CMAKE) -DKNOWD_SANITIZE=thread >/dev/null
	@cmake --build $(TSAN_DIR) -j $(JOBS) --target $(TSAN_TARGETS)
	@for dir in serve storage client daemon; do \
	  (cd $(TSAN_DIR)/tests/$$dir && $(TSAN_ENV) ctest --output-on-failure -j $(JOBS) \
	    -LE fault -E '_NOT_BUILT$$' --timeout 3600) || exit 1; done

# CI's sanitizer pass: the ASan + UBSan unit tests of tests/serve, tests/storage and tests/client
# (no daemon binary, so not the e2e ones), in the same directory as test-asan.
.PHONY: test-sanitize-quick
test-sanitize-quick: deps
	@cmake -S . -B $(ASAN_DIR) $(SAN_CMAKE) -DKNOWD_SANITIZE=address >/dev/null
	@cmake --build $(ASAN_DIR) -j $(JOBS) --target $(QUICK_TARGETS)
	@for dir in serve storage client; do \
	  (cd $(ASAN_DIR)/tests/$$dir && $(ASAN_ENV) ctest --output-on-failure -j $(JOBS) \
	    -LE 'e2e|fault' -E '_NOT_BUILT$$' --timeout 1200) || exit 1; done

# The daemon under 64 mixed clients for SOAK_SECONDS (default 10 minutes): errors by code, RSS
# growth, p50/p99 per call beside the machine's peaks; report in $(BUILD_DIR)/soak/.
SOAK_SECONDS ?= 600
.PHONY: soak
soak: build
	@SOAK_SECONDS=$(SOAK_SECONDS) scripts/soak $(BUILD_DIR)

demo: build
	@scripts/demo $(BUILD_DIR)

# The Debian package (docs/operations.md, "Deploying"): a portable build (no -march=native) of
# knowd and knowctl in $(PACKAGE_DIR), then cpack: $(PACKAGE_DIR)/knowd_<version>_<arch>.deb.
PACKAGE_DIR ?= build-package
.PHONY: package
package: deps
	@cmake -S . -B $(PACKAGE_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release -DKNOWD_NATIVE=OFF \
	  $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(PACKAGE_DIR) -j $(JOBS) --target knowd knowctl
	@cd $(PACKAGE_DIR) && cpack -G DEB

# The container image built from Debian's archive (deploy/container/build-rootfs) and run as a
# container until /readyz answers (tests/deploy/image_test.py; needs root and the archive).
.PHONY: test-image
test-image: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -L image --timeout 1200

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

# The folder dependency picture of docs/architecture.md, from the include graph (a test keeps the
# .dot's edges equal to the build's).
docs: deps
	@scripts/check-layering --dot > docs/architecture.dot
	@dot -Tsvg docs/architecture.dot -o docs/architecture.svg

format:
	@git ls-files '*.h' '*.cc' '*.cu' '*.cuh' | xargs clang-format -i

# Formatting is part of the build: a file clang-format would change fails the check.
format-check: deps
	@git ls-files '*.h' '*.cc' '*.cu' '*.cuh' | xargs clang-format --dry-run -Werror

clean:
	rm -rf $(BUILD_DIR)
