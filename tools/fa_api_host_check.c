/*
 * fa_api_host_check.c -- the C API's sized-struct contract (flashattn.h: "Params grow at their
 * end"), checked from a plain C program with no GPU, through the host path:
 *
 *   - a caller built against the first published fa_params, which ends before window_left,
 *     keeps working, and the library never reads past its struct_size: the bytes there hold a
 *     window and a softcap, and the result is that of neither;
 *   - a struct_size outside [first layout, sizeof] and a NULL struct are refused with
 *     FA_ERR_INVALID_ARGUMENT and a message naming the field and its initialiser;
 *   - the same refusals for fa_grad_params and fa_kvcache_params.
 *
 *   build: tools/build_selftest.sh   (links the objects setup.py compiled into build/)
 *   run:   tools/fa_api_host_check   (exit status 0 when every check passes)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flashattn.h"

/* The first published layout of fa_params: everything before the window. */
#define FIRST_PARAMS_LAYOUT offsetof(fa_params, window_left)

enum { B = 1, S = 8, H = 1, D = 16 };

static float q[B * S * H * D], k[B * S * H * D], v[B * S * H * D];
static int failures, checks;

static void expect(int ok, const char *what)
{
    checks++;
    if (!ok) {
        failures++;
        printf("FAIL %s (last error: %s)\n", what, fa_last_error());
    }
}

/* status is FA_ERR_INVALID_ARGUMENT and the message holds `text`. */
static void expect_refused(fa_status status, const char *text, const char *what)
{
    expect(status == FA_ERR_INVALID_ARGUMENT && strstr(fa_last_error(), text) != NULL, what);
}

/* A float32 host problem (S x S, one head) writing into out. */
static fa_params problem(float *out)
{
    fa_params p;
    fa_params_init(&p);
    p.q = q, p.k = k, p.v = v, p.out = out;
    p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = p.o_batch_stride = S * H * D;
    p.q_row_stride = p.k_row_stride = p.v_row_stride = p.o_row_stride = H * D;
    p.q_head_stride = p.k_head_stride = p.v_head_stride = p.o_head_stride = D;
    p.batch = B, p.seqlen_q = p.seqlen_k = S, p.heads_q = p.heads_kv = H, p.head_dim = D;
    p.dtype = FA_FLOAT32;
    p.softmax_scale = 0.25f;
    return p;
}

static void older_callers_keep_working(void)
{
    static float want[B * S * H * D], got[B * S * H * D], masked[B * S * H * D];
    fa_params p = problem(want);
    expect(fa_forward_cpu(&p) == FA_OK, "a full-size fa_params runs");

    /* What a window and a softcap would give: the check below must not match it. */
    fa_params tail = problem(masked);
    tail.window_left = tail.window_right = 0;
    tail.softcap = 2.0f;
    expect(fa_forward_cpu(&tail) == FA_OK, "a windowed, softcapped fa_params runs");
    expect(memcmp(want, masked, sizeof want) != 0, "the window and softcap change the result");

    fa_params old = problem(got);
    old.struct_size = FIRST_PARAMS_LAYOUT;
    memcpy((char *)&old + FIRST_PARAMS_LAYOUT, (const char *)&tail + FIRST_PARAMS_LAYOUT,
           sizeof old - FIRST_PARAMS_LAYOUT);
    expect(fa_check_params(&old, 0) == FA_OK, "the first layout is accepted");
    expect(fa_forward_cpu(&old) == FA_OK && memcmp(want, got, sizeof want) == 0,
           "the first layout gets the defaults of the later fields, not the bytes past it");
}

static void sizes_outside_the_range_are_refused(void)
{
    static float out[B * S * H * D];
    const size_t sizes[] = {0, FIRST_PARAMS_LAYOUT - 1, sizeof(fa_params) + 1};
    char text[96];
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        fa_params p = problem(out);
        p.struct_size = sizes[i];
        snprintf(text, sizeof text, "params.struct_size is %zu; set it with fa_params_init",
                 sizes[i]);
        expect_refused(fa_check_params(&p, 0), text, text);
        expect_refused(fa_forward_cpu(&p), text, "fa_forward_cpu refuses it too");
    }
    expect_refused(fa_check_params(NULL, 0), "params must not be NULL", "NULL params");
}

static void grad_and_kvcache_params_follow_the_same_rule(void)
{
    static float out[B * S * H * D];
    fa_params p = problem(out);
    fa_grad_params g;
    fa_grad_params_init(&g);
    g.struct_size = 0;
    expect_refused(fa_check_grad_params(&p, &g, 0),
                   "grad.struct_size is 0; set it with fa_grad_params_init", "grad size 0");
    g.struct_size = sizeof g + 8;
    expect_refused(fa_check_grad_params(&p, &g, 0), "grad.struct_size is", "grad size too big");
    expect_refused(fa_check_grad_params(&p, NULL, 0), "grad params must not be NULL",
                   "NULL grad params");

    fa_kvcache_params c;
    fa_kvcache_params_init(&c);
    c.struct_size = 0;
    expect_refused(fa_kvcache_check(&p, &c, 0),
                   "kvcache.struct_size is 0; set it with fa_kvcache_params_init",
                   "kvcache size 0");
    c.struct_size = sizeof c + 8;
    expect_refused(fa_kvcache_check(&p, &c, 0), "kvcache.struct_size is",
                   "kvcache size too big");
    expect_refused(fa_kvcache_check(&p, NULL, 0), "kvcache params must not be NULL",
                   "NULL kvcache params");
}

int main(void)
{
    unsigned state = 12345u;
    for (int i = 0; i < B * S * H * D; i++) {
        state = state * 1664525u + 1013904223u;
        q[i] = (float)(state >> 8) / (float)(1u << 24) - 0.5f;
        k[i] = q[(i * 7) % (B * S * H * D)] + 0.25f;
        v[i] = (float)(i % 13) - 6.0f;
    }
    older_callers_keep_working();
    sizes_outside_the_range_are_refused();
    grad_and_kvcache_params_follow_the_same_rule();
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
