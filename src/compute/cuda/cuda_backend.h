/* C-callable extras of the CUDA backend (the backend itself is created with
 * nmlx_backend_cuda_create in compute/backend.h). */
#ifndef NMLX_CUDA_BACKEND_H
#define NMLX_CUDA_BACKEND_H

#include "compute/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Waits for the stream; returns an error naming the first CUDA failure any
 * (void) op met so far, else NMLX_OK. Tests call it after each op. */
nmlx_status nmlx_backend_cuda_check(nmlx_backend *be);

#ifdef __cplusplus
}
#endif

#endif
