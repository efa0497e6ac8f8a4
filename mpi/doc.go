// Package mpi is a thin binding of MPI's C interface (mpi.h) for
// data-parallel training: a communicator over MPI_COMM_WORLD that sums
// float32 buffers in place (MPI_Iallreduce) and gathers byte messages
// (MPI_Iallgatherv), with MPI's error handler set to return errors and a
// timeout on every collective, so that a rank that died or hangs ends the
// job with an error instead of stalling it. *Comm implements train.Comm.
//
// The binding needs an MPI library and is compiled only with the build tag
// mpi (go build -tags mpi); it is written against OpenMPI (pkg-config
// package ompi-c) and uses only MPI-3 calls. The qatc-mpi binary is
// cmd/qatc built with that tag (make qatc-mpi).
package mpi
