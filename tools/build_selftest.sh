#!/usr/bin/env bash
# Links tools/fa_selftest (a plain C program over csrc/flashattn.h) from the objects that
# `python setup.py build_ext --inplace` compiled into build/: no second nvcc pass.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=""
for d in build/obj/ build/temp.*/; do
    [ -f "${d}csrc/launch.o" ] && { tmp=$d; break; }
done
[ -n "$tmp" ] || { echo "no build objects: run python setup.py build_ext --inplace --build-temp build/obj first" >&2; exit 2; }
cuda=${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")}
lib=$cuda/lib64; [ -f "$lib/libcudart_static.a" ] || lib=$cuda/lib
gcc -O2 -std=c11 -Wall -Icsrc -I"$cuda/include" tools/fa_selftest.c \
    "${tmp}csrc/launch.o" "${tmp}csrc/backward.o" "${tmp}csrc/kvcache.o" "${tmp}csrc/device_buffer.o" \
    "${tmp}csrc/cpu_reference.o" "${tmp}csrc/cpu_backward.o" "${tmp}"csrc/kernels/*.cu.o \
    -L"$lib" -lcudart_static -ldl -lpthread -lrt -lstdc++ -lm -o tools/fa_selftest
echo "built tools/fa_selftest"
