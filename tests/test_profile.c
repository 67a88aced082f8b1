/* NMLX_PROFILE=1: a backend made by nmlx_backend_create times its ops
 * without changing what they compute (results equal an unprofiled backend
 * bit for bit), names each op by kind and shape with its call count in the
 * table printed at detach, and gets its own ops back afterwards. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"
#include "compute/backend.h"
#include "harness.h"

#include <stdlib.h>
#include <string.h>

enum { D = 37, N = 29, T = 3 };

static void run_ops(nmlx_backend *be, const nmlx_weight *w, const float *x, float *y, float *yn) {
    be->ops->matmul(be, w, NULL, x, y, T); /* T = 3 */
    be->ops->matmul(be, w, NULL, x, y + T * D, 1);
    be->ops->rmsnorm(be, y, NULL, 0.0f, 1e-6f, yn, T, D);
    be->ops->add(be, y, yn, yn, T * D);
}

int main(void) {
    float W[D * N], x[T * N], y0[(T + 1) * D], y1[(T + 1) * D], n0[T * D], n1[T * D];
    test_seed(91);
    for (int i = 0; i < D * N; i++)
        W[i] = test_randf(-1, 1);
    for (int i = 0; i < T * N; i++)
        x[i] = test_randf(-1, 1);
    nmlx_weight w = {.w = {.dtype = NMLX_DT_F32, .ndim = 2, .shape = {D, N}, .data = W},
                     .mode = NMLX_QUANT_NONE,
                     .rows = D,
                     .cols = N};

    nmlx_backend *plain = NULL, *prof = NULL;
    unsetenv("NMLX_PROFILE");
    EXPECT(nmlx_backend_create("cpu", 2, &plain) == NMLX_OK, "plain: %s", nmlx_last_error());
    setenv("NMLX_PROFILE", "1", 1);
    EXPECT(nmlx_backend_create("cpu", 2, &prof) == NMLX_OK, "profiled: %s", nmlx_last_error());
    unsetenv("NMLX_PROFILE");
    if (!plain || !prof) return test_summary();
    EXPECT(plain->ops != prof->ops, "profiled backend has its own op table");
    EXPECT(nmlx_backend_is_host(prof) && !strcmp(prof->ops->name, "cpu"), "still the cpu backend");

    for (int rep = 0; rep < 2; rep++) {
        run_ops(plain, &w, x, y0, n0);
        run_ops(prof, &w, x, y1, n1);
    }
    EXPECT(!memcmp(y0, y1, sizeof y0) && !memcmp(n0, n1, sizeof n0), "same results, bit for bit");

    FILE *f = tmpfile();
    EXPECT(f != NULL, "tmpfile");
    if (f) {
        nmlx_backend_profile_detach(prof, f);
        EXPECT(prof->ops == plain->ops, "detach restores the backend's own ops");
        rewind(f);
        char text[4096];
        size_t n = fread(text, 1, sizeof text - 1, f);
        text[n] = 0;
        fclose(f);
        EXPECT(strstr(text, "8 op calls") != NULL, "call total in:\n%s", text);
        const char *rows[] = {"matmul F32 37x29 T=3", "matmul F32 37x29 T=1", "rmsnorm D=37",
                              "add"};
        for (int i = 0; i < 4; i++) {
            const char *r = strstr(text, rows[i]);
            EXPECT(r != NULL, "row '%s' in:\n%s", rows[i], text);
            if (r)
                EXPECT(atoll(r + strlen(rows[i]) + strspn(r + strlen(rows[i]), " ")) == 2,
                       "'%s' counted twice", rows[i]);
        }
        /* a second detach (or one on an unprofiled backend) does nothing */
        nmlx_backend_profile_detach(prof, stderr);
        nmlx_backend_profile_detach(plain, stderr);
    }
    nmlx_backend_free(prof);
    nmlx_backend_free(plain);
    return test_summary();
}
