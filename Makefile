# Shortcuts for the scripts the README names.
.PHONY: build qatc-mpi demo test ort
build:
	go build -o bin/qatc ./cmd/qatc
# qatc-mpi: cmd/qatc with the MPI binding (data-parallel train and finetune).
qatc-mpi:
	scripts/install-openmpi.sh
	go build -tags mpi -o bin/qatc-mpi ./cmd/qatc
ort:
	scripts/install-onnxruntime.sh
demo:
	scripts/demo.sh
test:
	scripts/test.sh
