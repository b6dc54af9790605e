/*
 * seqlen.h -- the query and key lengths of one batch entry.
 *
 * Uniform batches give every entry (seqlen_q, seqlen_k). Variable-length batches will give
 * entry b the rows [cu[b], cu[b+1]) of a packed tensor; the kernels and the host reference
 * take lengths only from here, so that change is made once.
 */
#ifndef FA_COMMON_SEQLEN_H
#define FA_COMMON_SEQLEN_H

#include <stdint.h>

#include "hd.h"

typedef struct {
    int len_q, len_k;
} fa_seqlen;

/* cu_seqlens_q / cu_seqlens_k: NULL for a uniform batch, else batch + 1 offsets. */
FA_HD fa_seqlen fa_seqlen_of(int b, int seqlen_q, int seqlen_k, const int32_t *cu_seqlens_q,
                             const int32_t *cu_seqlens_k)
{
    fa_seqlen s;
    s.len_q = cu_seqlens_q ? cu_seqlens_q[b + 1] - cu_seqlens_q[b] : seqlen_q;
    s.len_k = cu_seqlens_k ? cu_seqlens_k[b + 1] - cu_seqlens_k[b] : seqlen_k;
    return s;
}

#endif /* FA_COMMON_SEQLEN_H */
