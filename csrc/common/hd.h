/*
 * hd.h -- FA_HD: a function compiled for the host and, under nvcc, for the device too.
 * The headers of csrc/common/ hold the rules every op, kernel family and the host reference
 * share (sequence lengths, mask, key-block range, score hook); they are plain C so that
 * cpu_reference.c and launch.c include them as they are.
 */
#ifndef FA_COMMON_HD_H
#define FA_COMMON_HD_H

#if defined(__CUDACC__)
#define FA_HD __host__ __device__ __forceinline__
#else
#define FA_HD static inline
#endif

FA_HD int fa_imin(int a, int b) { return a < b ? a : b; }
FA_HD int fa_imax(int a, int b) { return a > b ? a : b; }

#endif /* FA_COMMON_HD_H */
