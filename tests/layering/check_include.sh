#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Usage: check_include.sh CXX INCLUDE_ROOT SOURCE [extra flags...]
# The drivers layer's include root must let a driver include the device's
# interface header and refuse its model header: the first compile succeeds,
# the second fails because the model header is not there.
set -u
cxx=$1 root=$2 src=$3
shift 3
if ! "$cxx" -std=gnu++20 -fsyntax-only -I"$root" "$@" "$src" 2>ok.err; then
  echo "positive control failed: the interface header should compile"; cat ok.err; exit 1
fi
if "$cxx" -std=gnu++20 -fsyntax-only -DUVFIO_INCLUDE_MODEL -I"$root" "$@" "$src" 2>bad.err; then
  echo "a driver including hw/mlx5/pf.h compiled: the layer boundary is not enforced"; exit 1
fi
if ! grep -q "hw/mlx5/pf.h: No such file" bad.err; then
  echo "failed for another reason than the missing model header:"; cat bad.err; exit 1
fi
echo "ok: hw/mlx5/mlx5_ifc.h compiles, hw/mlx5/pf.h is not reachable from drivers"
