#!/usr/bin/env bash
# The tests: installs onnxruntime (scripts/install-onnxruntime.sh), then
# runs go vet and every package's tests. CI runs exactly this (.ci/run).
# Long runs (the big model, benchmarks) are behind -bench and flags.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-onnxruntime.sh
go vet ./...
go test -timeout 40m ./... "$@"
