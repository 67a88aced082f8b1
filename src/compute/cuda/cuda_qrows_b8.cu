/* The few-rows kernels v2 / v3 for 8-bit weights (cuda_qrows_launch.h says
 * why they are instantiated apart). */
#include "compute/cuda/cuda_qrows_launch.h"

bool nmlx_qrows_v2_b8(nmlx_backend *be, const qr_cfg &cfg, const nmlx_weight *w, const qr2_args &a,
                      const float *x3) {
    return launch2_bits<8>(be, cfg, w, a, x3);
}
