/*
 * seqlen.h -- where batch entry b's rows and keys are: its lengths and its row addresses.
 *
 * Every kernel, the host reference and the tests' reference take a batch entry's geometry only
 * from here. Four layouts combine:
 *   uniform   entry b has seqlen_q rows and seqlen_k keys at batch index b of q/out and k/v;
 *   packed    (varlen) cu_seqlens_q / cu_seqlens_k (batch + 1 int32 offsets): entry b owns the
 *             rows [cu[b], cu[b+1]) of a (total, heads, head_dim) tensor; batch strides are 0;
 *   used      seqused_k[b] (int32): entry b sees only its first seqused_k[b] keys (a KV cache
 *             filled to that length); kv_batch_idx[b]: it reads k/v batch entry kv_batch_idx[b];
 *   paged     block_table (batch, block_table_stride) int32: k and v are pages of page_size keys,
 *             (num_pages, page_size, heads_kv, head_dim), and key j of entry b lives in row
 *             j % page_size of page block_table[b][j / page_size]; k's batch stride is the
 *             page stride;
 *   appended  seqlen_new > 0 (the KV-cache op's new keys, read where they arrive): entry b
 *             attends to its len_k keys of k and v (seqused_k[b] or seqlen_k; all that
 *             fa_seqlen_at counts) and then seqlen_new more from separate (batch, seqlen_new,
 *             heads_kv, head_dim) tensors. Only kernels that take those tensors set it.
 * The softmax LSE is (batch, heads_q, seqlen_q) for unpacked rows and (heads_q, total_q) for
 * packed ones (FlashAttention's varlen layout).
 */
#ifndef FA_COMMON_SEQLEN_H
#define FA_COMMON_SEQLEN_H

#include <stdint.h>

#include "hd.h"

/* The sequence layout of one call: plain data, copied into every kernel's argument block. */
typedef struct {
    int seqlen_q, seqlen_k;                     /* uniform lengths; the maxima when packed */
    int total_q;                                /* packed q rows (the LSE's row extent) */
    const int32_t *cu_seqlens_q, *cu_seqlens_k; /* NULL: not packed */
    const int32_t *seqused_k;                   /* NULL: every key of the entry is used */
    const int32_t *kv_batch_idx;                /* NULL: entry b reads k/v entry b */
    const int32_t *block_table;                 /* NULL: k/v are not paged */
    int64_t block_table_stride;
    int page_size;
    int seqlen_new; /* appended keys per entry; 0: none */
} fa_seq_layout;

/* One batch entry: its lengths and where its rows start. */
typedef struct {
    int len_q, len_k;
    int64_t q_row0; /* packed row of its first query (0 when not packed) */
    int64_t k_row0; /* packed row of its first key (0 when not packed) */
    int kv_batch;   /* the k/v batch entry it reads (unused when paged) */
} fa_seqlen;

FA_HD fa_seqlen fa_seqlen_at(const fa_seq_layout *s, int b)
{
    fa_seqlen e;
    const int32_t *cq = s->cu_seqlens_q, *ck = s->cu_seqlens_k;
    e.len_q = cq ? cq[b + 1] - cq[b] : s->seqlen_q;
    e.q_row0 = cq ? cq[b] : 0;
    e.k_row0 = ck ? ck[b] : 0;
    e.len_k = s->seqused_k ? s->seqused_k[b] : ck ? ck[b + 1] - ck[b] : s->seqlen_k;
    e.kv_batch = s->kv_batch_idx ? s->kv_batch_idx[b] : b;
    return e;
}

/* Element offset of row i of entry b in q, out (or dout, dq), heads excluded. */
FA_HD int64_t fa_q_row_offset(const fa_seqlen *e, int b, int i, int64_t batch_stride,
                              int64_t row_stride)
{
    return (int64_t)b * batch_stride + (e->q_row0 + i) * row_stride;
}

/* Element offset of key j of entry b in k or v (or dk, dv), heads excluded. */
FA_HD int64_t fa_k_row_offset(const fa_seq_layout *s, const fa_seqlen *e, int b, int j,
                              int64_t batch_stride, int64_t row_stride)
{
    if (s->block_table) {
        const int64_t page = s->block_table[(int64_t)b * s->block_table_stride + j / s->page_size];
        return page * batch_stride + (int64_t)(j % s->page_size) * row_stride;
    }
    return (int64_t)e->kv_batch * batch_stride + (e->k_row0 + j) * row_stride;
}

/* Whether each aligned run of n keys (first key a multiple of n) lies in one page, so that its
 * keys follow one another at row_stride from the run's first: always unpaged, and paged when
 * page_size is a multiple of n. A kernel that copies keys in such runs then looks one page up
 * per run instead of one per key. */
FA_HD int fa_key_runs_share_page(const fa_seq_layout *s, int n)
{
    return !s->block_table || s->page_size % n == 0;
}

/* Index of row i of (entry b, q head h) in the LSE (and in any per-row fp32 array laid out
 * like it: the backward's delta). */
FA_HD int64_t fa_lse_index(const fa_seq_layout *s, const fa_seqlen *e, int b, int heads_q, int h,
                           int i)
{
    return s->cu_seqlens_q ? (int64_t)h * s->total_q + e->q_row0 + i
                           : ((int64_t)b * heads_q + h) * s->seqlen_q + i;
}

#endif /* FA_COMMON_SEQLEN_H */
