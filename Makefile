# The two commands of the README. Both install missing Debian packages, configure and build
# Release with CMake, and then either start the main job (serve) or run the whole suite (test).
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
MODEL_DIR ?= models
DEFAULT_MODEL ?= $(MODEL_DIR)/default.gguf
TUTTI := $(BUILD_DIR)/tools/tutti/tutti

.PHONY: deps configure build serve test clean model

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

test: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS)

clean:
	rm -rf $(BUILD_DIR)
