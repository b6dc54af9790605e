#!/usr/bin/env bash
# Links tools/fa_selftest (the GPU kernels against the host reference) and
# tools/fa_api_host_check (the sized-struct contract, no GPU), plain C programs over
# csrc/flashattn.h, from the objects that `python setup.py build_ext --inplace` compiled into
# build/: no second nvcc pass. Usage: tools/build_selftest.sh [OUTPUT_DIR] (default tools/).
set -euo pipefail
out=$(realpath "${1:-$(dirname "$0")}")
cd "$(dirname "$0")/.."
tmp=""
for d in build/obj/ build/temp.*/; do
    [ -f "${d}csrc/launch.o" ] && { tmp=$d; break; }
done
[ -n "$tmp" ] || { echo "no build objects: run python setup.py build_ext --inplace --build-temp build/obj first" >&2; exit 2; }
cuda=${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")}
lib=$cuda/lib64; [ -f "$lib/libcudart_static.a" ] || lib=$cuda/lib
for prog in fa_selftest fa_api_host_check; do
    gcc -O2 -std=c11 -Wall -Icsrc -I"$cuda/include" tools/$prog.c \
        "${tmp}csrc/launch.o" "${tmp}csrc/backward.o" "${tmp}csrc/kvcache.o" "${tmp}csrc/device_buffer.o" \
        "${tmp}csrc/cpu_reference.o" "${tmp}csrc/cpu_backward.o" "${tmp}"csrc/kernels/*.cu.o \
        -L"$lib" -lcudart_static -ldl -lpthread -lrt -lstdc++ -lm -o "$out/$prog"
    echo "built $out/$prog"
done
