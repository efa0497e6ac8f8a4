# qatc: the two commands the README starts with.
#   make demo   installs onnxruntime, builds qatc and runs the main job on the demo model
#   make test   installs onnxruntime and runs the tests
GO ?= go
BIN := bin/qatc

.PHONY: all build ort demo test vet fmt

all: build

ort:
	@scripts/install-onnxruntime.sh

build:
	$(GO) build -o $(BIN) ./cmd/qatc

demo: ort build
	@scripts/demo.sh

test: ort
	$(GO) vet ./...
	$(GO) test -timeout 30m ./...

fmt:
	gofmt -l -w $$(git ls-files '*.go')
