#!/usr/bin/env bash
# The tests: installs onnxruntime (scripts/install-onnxruntime.sh) and
# OpenMPI (scripts/install-openmpi.sh: package mpi's tests run qatc-mpi
# under mpirun), then runs go vet and every package's tests. CI runs
# exactly this (.ci/run).
# Long runs (the big model, benchmarks) are behind -bench and flags.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-onnxruntime.sh
scripts/install-openmpi.sh
go vet ./...
go vet -tags mpi ./mpi ./cmd/qatc
go test -timeout 40m ./... "$@"
