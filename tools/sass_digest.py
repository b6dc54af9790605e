#!/usr/bin/env python3
"""sass_digest.py -- one line per kernel of a cubin: a digest of its machine code (.text) and of
its attributes (.nv.info: registers, barriers, parameters), for checking that a change leaves
the device code as it was, on a machine without a GPU or cuobjdump.

    nvcc -cubin -O3 -std=c++17 --use_fast_math -gencode arch=compute_90a,code=sm_90a -I csrc \\
        csrc/kernels/fwd_sm90_hd128.cu -o new.cubin      (and the same in the old tree: old.cubin)
    tools/sass_digest.py old.cubin > old.txt
    tools/sass_digest.py new.cubin --strip 'ELi2(?=EEE)' > new.txt
    diff old.txt new.txt                                  (no output: the same machine code)

--strip REGEX removes what a change added to the mangled names (a template argument with a
default, say) before the lines are sorted by name. Build both cubins without -lineinfo: line
tables name the source paths. Only the standard library is used (the ELF64 section headers are
read directly).
"""
import argparse
import hashlib
import re
import struct
import sys


def kernel_sections(data):
    """(section name, bytes) of every .text.* and .nv.info.* section."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError("not an ELF64 file (a cubin from nvcc -cubin)")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]

    def name(offset):
        end = data.index(b"\0", names_at + offset)
        return data[names_at + offset:end].decode()

    for h in headers:
        n = name(h[0])
        if n.startswith((".text.", ".nv.info.")):
            yield n, data[h[4]:h[4] + h[5]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cubin")
    ap.add_argument("--strip", default=None, help="regex removed from every section name")
    args = ap.parse_args()
    with open(args.cubin, "rb") as f:
        data = f.read()
    lines = []
    for n, body in kernel_sections(data):
        if args.strip:
            n = re.sub(args.strip, "", n)
        lines.append("%s %s %d" % (n, hashlib.sha256(body).hexdigest()[:16], len(body)))
    if not lines:
        sys.exit("no kernel sections in " + args.cubin)
    print("\n".join(sorted(lines)))


if __name__ == "__main__":
    main()
