# The two commands of the README. Both install missing Debian packages, configure and build
# Release with CMake, and then either start the main job (serve) or run the whole suite (test).
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
MODEL_DIR ?= models
DEFAULT_MODEL ?= $(MODEL_DIR)/default.gguf
TUTTI := $(BUILD_DIR)/tools/tutti/tutti

.PHONY: deps configure build serve test clean model soak fuzz sanitize

deps:
	@bash tools/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null

build: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS)

$(DEFAULT_MODEL): | build
	@mkdir -p $(MODEL_DIR)
	$(TUTTI) model init --out $(DEFAULT_MODEL)

model: build $(DEFAULT_MODEL)

# The main job: the OpenAI-compatible server on the embedded default model.
HOST ?= 127.0.0.1
PORT ?= 8080
serve: build model
	$(TUTTI) serve --model $(DEFAULT_MODEL) --host $(HOST) --port $(PORT)

# A relative TUTTI_SHARED_DIR (e.g. ../shared) means relative to where make runs; ctest runs
# the tests in the build folder, so it is made absolute first.
test: build
	@cd $(BUILD_DIR) && $(if $(TUTTI_SHARED_DIR),TUTTI_SHARED_DIR=$(abspath $(TUTTI_SHARED_DIR))) ctest --output-on-failure -j $(JOBS)

# Hardening checks that take minutes (not part of `make test`):
# soak: steady mixed load on the default model (SOAK_SECONDS, default 600); memory, file
# descriptors, sequences, KV blocks and the ledger checked at the end.
SOAK_SECONDS ?= 600
soak: build model
	@bash tools/soak.sh $(SOAK_SECONDS) $(BUILD_DIR)/soak
# fuzz: the input fuzz target (every parser of client or file bytes) for FUZZ_SECONDS (default 300) with a random seed.
FUZZ_SECONDS ?= 300
fuzz: build
	@FUZZ_SEED=0 bash tools/fuzz.sh $(FUZZ_SECONDS) $(BUILD_DIR)/fuzz
# sanitize: the whole suite built with AddressSanitizer and UndefinedBehaviorSanitizer. Any
# report fails its test (halt_on_error), except what tools/ubsan.supp names (not ours).
sanitize: deps
	@cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTUTTI_CUDA=OFF \
	  -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer" >/dev/null
	@cmake --build build-sanitize -j $(JOBS)
	@cd build-sanitize && ASAN_OPTIONS=detect_leaks=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:suppressions=$(CURDIR)/tools/ubsan.supp \
	  $(if $(TUTTI_SHARED_DIR),TUTTI_SHARED_DIR=$(abspath $(TUTTI_SHARED_DIR))) ctest --output-on-failure -j $(JOBS) -E 'input_fuzz|browser'

clean:
	rm -rf $(BUILD_DIR)
