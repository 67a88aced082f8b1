/* NMLX_SKIP_OPS (src/compute/backend_skip.c, timing only): the named ops of
 * a new backend's table become no-ops that leave their outputs alone; other
 * ops, unknown names and backends created without the setting keep the
 * real ones; it composes with NMLX_FUSED=0. */
#define _POSIX_C_SOURCE 200809L
#include "compute/backend.h"
#include "harness.h"

#include <stdlib.h>
#include <string.h>

static nmlx_backend *make(const char *skip, const char *fused) {
    if (skip)
        setenv("NMLX_SKIP_OPS", skip, 1);
    else
        unsetenv("NMLX_SKIP_OPS");
    if (fused)
        setenv("NMLX_FUSED", fused, 1);
    else
        unsetenv("NMLX_FUSED");
    nmlx_backend *be = NULL;
    EXPECT(nmlx_backend_create("cpu", 1, &be) == NMLX_OK, "create (skip %s)", skip ? skip : "-");
    return be;
}

int main(void) {
    nmlx_backend *plain = make(NULL, NULL);
    nmlx_backend *sk = make("rmsnorm,attention,bogus,act_mul,attention_rows", NULL);
    nmlx_backend *both = make("matmul", "0");
    if (!plain || !sk || !both) return test_summary();

    EXPECT(sk->ops->rmsnorm != plain->ops->rmsnorm, "rmsnorm replaced");
    EXPECT(sk->ops->attention != plain->ops->attention, "attention replaced");
    EXPECT(sk->ops->act_mul != plain->ops->act_mul, "act_mul replaced");
    EXPECT(sk->ops->attention_rows == plain->ops->attention_rows,
           "an op the backend lacks stays absent (%s)",
           plain->ops->attention_rows ? "has it" : "NULL");
    EXPECT(sk->ops->matmul == plain->ops->matmul, "matmul kept");
    EXPECT(sk->ops->add == plain->ops->add, "add kept");
    EXPECT(both->ops->matmul != plain->ops->matmul, "matmul replaced with NMLX_FUSED=0");
    EXPECT(both->ops->add_rmsnorm == NULL, "NMLX_FUSED=0 still drops the fused ops");

    /* the real rmsnorm writes y; the skipped one leaves it as it was */
    enum { D = 64 };
    test_seed(7);
    float *x = test_rand_floats(D, -2.0f, 2.0f), y[D], y0[D];
    for (int i = 0; i < D; i++)
        y[i] = y0[i] = test_randf(-1.0f, 1.0f);
    sk->ops->rmsnorm(sk, x, NULL, 0.0f, 1e-6f, y, 1, D);
    EXPECT(!memcmp(y, y0, sizeof y), "the skipped rmsnorm left y alone");
    plain->ops->rmsnorm(plain, x, NULL, 0.0f, 1e-6f, y, 1, D);
    EXPECT(memcmp(y, y0, sizeof y) != 0, "the real rmsnorm wrote y");
    free(x);
    nmlx_backend_free(plain);
    nmlx_backend_free(sk);
    nmlx_backend_free(both);
    unsetenv("NMLX_SKIP_OPS");
    unsetenv("NMLX_FUSED");
    return test_summary();
}
