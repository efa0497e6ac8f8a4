# Shortcuts for the scripts the README names.
.PHONY: build demo test ort
build:
	go build -o bin/qatc ./cmd/qatc
ort:
	scripts/install-onnxruntime.sh
demo:
	scripts/demo.sh
test:
	scripts/test.sh
