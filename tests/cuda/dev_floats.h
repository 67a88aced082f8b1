/* f32 buffers between the host and a backend's device memory, for the CUDA
 * tests: a copy of host floats, a buffer of NaNs (an output element left
 * unwritten shows), and a host copy of device floats (malloc'd; the
 * caller frees both kinds). */
#ifndef NMLX_TEST_DEV_FLOATS_H
#define NMLX_TEST_DEV_FLOATS_H

#include "compute/backend.h"

#include <math.h>
#include <stdlib.h>

static inline float *test_dev_floats(nmlx_backend *be, const float *h, size_t n) {
    float *d = be->ops->alloc(be, n * sizeof(float));
    be->ops->upload(be, d, h, n * sizeof(float));
    return d;
}

static inline float *test_dev_nan(nmlx_backend *be, size_t n) {
    float *h = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        h[i] = NAN;
    float *d = test_dev_floats(be, h, n);
    free(h);
    return d;
}

static inline float *test_host_floats(nmlx_backend *be, const float *d, size_t n) {
    float *h = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        h[i] = NAN;
    be->ops->download(be, h, d, n * sizeof(float));
    return h;
}

#endif
