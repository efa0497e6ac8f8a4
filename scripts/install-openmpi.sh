#!/usr/bin/env bash
# Installs OpenMPI for qatc-mpi: mpirun, and the headers and pkg-config
# file (ompi-c) that `go build -tags mpi` compiles the binding against.
#
#   scripts/install-openmpi.sh        # apt-get install openmpi-bin libopenmpi-dev pkg-config
#
# Running it again is a no-op once they are in place. Without apt-get it
# says what to install.
set -euo pipefail

have() {
  command -v mpirun >/dev/null 2>&1 && command -v pkg-config >/dev/null 2>&1 && pkg-config --exists ompi-c
}

if have; then
  echo "OpenMPI already installed: $(mpirun --version 2>/dev/null | head -n 1)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-openmpi: no apt-get here; install OpenMPI with its development files (mpirun, mpi.h, the pkg-config file ompi-c.pc) and pkg-config" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-openmpi: run as root (or install sudo) to apt-get install openmpi-bin libopenmpi-dev pkg-config" >&2; exit 1; }
  sudo=sudo
fi
echo "installing OpenMPI (apt-get install openmpi-bin libopenmpi-dev pkg-config) ..."
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev pkg-config >/dev/null
have || { echo "install-openmpi: mpirun or the ompi-c pkg-config file is still missing after apt-get" >&2; exit 1; }
echo "OpenMPI installed: $(mpirun --version 2>/dev/null | head -n 1)"
