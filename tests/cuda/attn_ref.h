/* The attention emulations' common ground (attn_mma_emu.cpp,
 * attn_decode_emu.cpp): a case's inputs, backend.h's `attention`
 * contract in double, and the error against it. The includer has included
 * compute/backend.h (nmlx_attn_args) and <cmath>, <vector>. */
#ifndef NMLX_TESTS_CUDA_ATTN_REF_H
#define NMLX_TESTS_CUDA_ATTN_REF_H

struct attn_case {
    std::vector<float> q, k, v, sk, out;
    nmlx_attn_args a;
};

/* T queries from q_pos over n_kv keys of a cache of cap rows, H heads over
 * KVH KV heads: q, k, v uniform in [-1, 1] (q times qmul: a peaky softmax
 * for qmul > 1), sinks in [-1, 2] (used if `sinks`); spread > 0: each k and
 * v row times e^u, u uniform in [-spread, spread]; cache rows past n_kv
 * NaN, as stale memory may hold (must not leak in); out NaN. rnd(lo, hi):
 * the test's random numbers, drawn in that order. */
template <typename U>
void attn_case_init(attn_case &c, int64_t T, int64_t H, int64_t KVH, int64_t HD, int64_t cap,
                    int64_t q_pos, int64_t n_kv, int64_t window, float softcap, bool sinks,
                    float qmul, float spread, U rnd) {
    c.q.assign((size_t)(T * H * HD), 0.0f);
    c.k.assign((size_t)(KVH * cap * HD), 0.0f);
    c.v.assign(c.k.size(), 0.0f);
    c.sk.assign((size_t)H, 0.0f);
    c.out.assign(c.q.size(), NAN);
    for (auto &x : c.q)
        x = qmul * rnd(-1, 1);
    for (auto &x : c.k)
        x = rnd(-1, 1);
    for (auto &x : c.v)
        x = rnd(-1, 1);
    for (auto &x : c.sk)
        x = rnd(-1, 2);
    if (spread > 0)
        for (size_t r = 0; r < c.k.size() / (size_t)HD; r++) {
            const float fk = expf(rnd(-spread, spread)), fv = expf(rnd(-spread, spread));
            for (int64_t d = 0; d < HD; d++)
                c.k[r * HD + d] *= fk, c.v[r * HD + d] *= fv;
        }
    for (int64_t kh = 0; kh < KVH; kh++)
        for (int64_t j = n_kv; j < cap; j++)
            for (int64_t d = 0; d < HD; d++)
                c.k[(size_t)((kh * cap + j) * HD + d)] = c.v[(size_t)((kh * cap + j) * HD + d)] =
                    NAN;
    nmlx_attn_args &a = c.a;
    a = {};
    a.q = c.q.data(), a.k = c.k.data(), a.v = c.v.data(), a.out = c.out.data();
    a.T = T, a.H = H, a.KVH = KVH, a.HD = HD, a.cap = cap, a.q_pos = q_pos, a.n_kv = n_kv;
    a.scale = 1.0f / sqrtf((float)HD), a.window = window, a.softcap = softcap;
    a.sinks = sinks ? c.sk.data() : NULL;
}

/* backend.h's contract in double */
inline void ref_attention(const nmlx_attn_args &a, std::vector<double> &out) {
    const int64_t HD = a.HD, G = a.H / a.KVH;
    out.assign((size_t)(a.T * a.H * HD), 0.0);
    std::vector<double> p;
    for (int64_t t = 0; t < a.T; t++)
        for (int64_t h = 0; h < a.H; h++) {
            const int64_t qi = a.q_pos + t, hi = qi < a.n_kv - 1 ? qi : a.n_kv - 1;
            int64_t lo = a.window > 0 ? qi - a.window + 1 : 0;
            if (lo < 0) lo = 0;
            if (lo > hi) continue; /* zeros */
            const float *q = a.q + (t * a.H + h) * HD;
            const float *K = a.k + (h / G) * a.cap * HD, *V = a.v + (h / G) * a.cap * HD;
            double m = a.sinks ? a.sinks[h] : -INFINITY;
            p.assign((size_t)(hi - lo + 1), 0.0);
            for (int64_t j = lo; j <= hi; j++) {
                double s = 0;
                for (int64_t d = 0; d < HD; d++)
                    s += (double)q[d] * K[j * HD + d];
                s *= a.scale;
                if (a.softcap > 0) s = tanh(s / a.softcap) * a.softcap;
                p[(size_t)(j - lo)] = s;
                m = s > m ? s : m;
            }
            double l = a.sinks ? exp(a.sinks[h] - m) : 0.0;
            for (auto &s : p)
                l += (s = exp(s - m));
            double *o = &out[(size_t)((t * a.H + h) * HD)];
            for (int64_t j = lo; j <= hi; j++)
                for (int64_t d = 0; d < HD; d++)
                    o[d] += p[(size_t)(j - lo)] / l * V[j * HD + d];
        }
}

/* max|ref| and the largest |out - ref| (NaN once any is NaN) */
inline void attn_err(const std::vector<float> &out, const std::vector<double> &ref, double &mx,
                     double &err) {
    mx = 0, err = 0;
    for (size_t i = 0; i < ref.size(); i++)
        mx = fmax(mx, fabs(ref[i]));
    for (size_t i = 0; i < ref.size(); i++) {
        const double e = fabs(out[i] - ref[i]);
        err = e > err || e != e ? e : err;
    }
}

#endif
