/* Ported mlx-lm pieces: RoPE factory (frequencies against transformers'
 * formulas, written independently here) and the KV cache (growth in steps
 * of 256 keeps contents, trim, overflow). */
#include "harness.h"
#include "ported/kv_cache.h"
#include "ported/rope.h"

#include <math.h>
#include <string.h>

static nmlx_rope_config rope_cfg(const char *type, double theta) {
    nmlx_rope_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.type, sizeof c.type, "%s", type);
    c.theta = theta;
    c.factor = 1;
    c.low_freq_factor = 1;
    c.high_freq_factor = 4;
    c.partial_rotary_factor = 1;
    return c;
}

/* transformers _compute_llama3_parameters, restated */
static double hf_llama3(double inv, double factor, double low, double high, double old) {
    double wavelen = 2 * 3.141592653589793 / inv;
    double low_wl = old / low, high_wl = old / high;
    if (wavelen < high_wl) return inv;
    if (wavelen > low_wl) return inv / factor;
    double smooth = (old / wavelen - low) / (high - low);
    return (1 - smooth) * inv / factor + smooth * inv;
}

static void test_rope(nmlx_backend *be) {
    nmlx_rope r;
    int64_t dims = 64;
    nmlx_rope_config c = rope_cfg("default", 500000.0);
    EXPECT(nmlx_rope_init(&r, be, dims, &c, 2048) == NMLX_OK, "default rope: %s", nmlx_last_error());
    for (int i = 0; i < dims / 2; i++) {
        double want = 1.0 / pow(500000.0, 2.0 * i / dims);
        EXPECT(fabs(r.host_freqs[i] - want) <= 1e-6 * want, "default freq %d", i);
    }
    nmlx_rope_free(&r, be);

    c = rope_cfg("linear", 10000.0);
    c.factor = 4;
    EXPECT(nmlx_rope_init(&r, be, dims, &c, 2048) == NMLX_OK, "linear rope");
    for (int i = 0; i < dims / 2; i++) {
        double want = 1.0 / pow(10000.0, 2.0 * i / dims) / 4;
        EXPECT(fabs(r.host_freqs[i] - want) <= 1e-6 * want, "linear freq %d", i);
    }
    nmlx_rope_free(&r, be);

    /* llama3 with a small original context so all three bands occur */
    double factors[][4] = {{8, 1, 4, 8192}, {32, 1, 4, 64}, {4, 2, 8, 256}};
    for (int k = 0; k < 3; k++) {
        c = rope_cfg("llama3", 500000.0);
        c.factor = factors[k][0];
        c.low_freq_factor = factors[k][1];
        c.high_freq_factor = factors[k][2];
        c.original_max_position_embeddings = (int64_t)factors[k][3];
        EXPECT(nmlx_rope_init(&r, be, 128, &c, 131072) == NMLX_OK, "llama3 rope %d", k);
        int bands[3] = {0};
        for (int i = 0; i < 64; i++) {
            double inv = 1.0 / pow(500000.0, 2.0 * i / 128);
            double want = hf_llama3(inv, c.factor, c.low_freq_factor, c.high_freq_factor,
                                    (double)c.original_max_position_embeddings);
            bands[want == inv ? 0 : fabs(want - inv / c.factor) < 1e-15 ? 2 : 1]++;
            EXPECT(fabs(r.host_freqs[i] - want) <= 2e-6 * want, "llama3 case %d freq %d: %g vs %g",
                   k, i, (double)r.host_freqs[i], want);
        }
        if (k == 1) EXPECT(bands[0] && bands[1] && bands[2], "case 1 covers all three bands");
        nmlx_rope_free(&r, be);
    }

    c = rope_cfg("longrope_v9", 10000.0);
    EXPECT(nmlx_rope_init(&r, be, dims, &c, 2048) == NMLX_ERR_UNSUPPORTED &&
               strstr(nmlx_last_error(), "longrope_v9"),
           "unknown rope type rejected by name");
    c = rope_cfg("default", 10000.0);
    EXPECT(nmlx_rope_init(&r, be, 7, &c, 2048) == NMLX_ERR_INVALID_MODEL,
           "odd rotary dims rejected");
}

static void test_kv_cache(nmlx_backend *be) {
    enum { KVH = 3, HD = 5, MAXC = 700 };
    nmlx_kv_cache c;
    nmlx_kv_cache_init(&c, KVH, HD, MAXC);
    static float k[MAXC][KVH][HD], v[MAXC][KVH][HD];
    test_seed(3);
    for (int t = 0; t < MAXC; t++)
        for (int h = 0; h < KVH; h++)
            for (int d = 0; d < HD; d++) {
                k[t][h][d] = test_randf(-1, 1);
                v[t][h][d] = test_randf(-1, 1);
            }
    /* appends of uneven sizes across the 256 and 512 growth points */
    int chunks[] = {1, 200, 60, 1, 1, 250, 87};
    int pos = 0;
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
        EXPECT(nmlx_kv_cache_reserve(&c, be, chunks[i]) == NMLX_OK, "reserve %d", chunks[i]);
        EXPECT(c.capacity % NMLX_KV_STEP == 0 || c.capacity == MAXC, "capacity %lld in steps",
               (long long)c.capacity);
        nmlx_kv_cache_append(&c, be, &k[pos][0][0], &v[pos][0][0], chunks[i]);
        pos += chunks[i];
    }
    EXPECT(c.offset == pos && c.capacity >= pos, "offset %lld", (long long)c.offset);
    int bad = 0;
    for (int t = 0; t < pos; t++)
        for (int h = 0; h < KVH; h++)
            for (int d = 0; d < HD; d++) {
                bad += c.keys[(h * c.capacity + t) * HD + d] != k[t][h][d];
                bad += c.values[(h * c.capacity + t) * HD + d] != v[t][h][d];
            }
    EXPECT(bad == 0, "cache holds every appended row after growth (%d wrong)", bad);
    EXPECT(nmlx_kv_cache_trim(&c, 10) == 10 && c.offset == pos - 10, "trim");
    EXPECT(nmlx_kv_cache_trim(&c, 100000) == pos - 10 && c.offset == 0, "trim clamps");
    EXPECT(nmlx_kv_cache_reserve(&c, be, MAXC) == NMLX_OK, "reserve to the cap");
    EXPECT(c.capacity == MAXC, "capacity clamped to max (%lld)", (long long)c.capacity);
    EXPECT(nmlx_kv_cache_reserve(&c, be, MAXC + 1) == NMLX_ERR_CONTEXT_OVERFLOW &&
               strstr(nmlx_last_error(), "context"),
           "overflow is an error");
    nmlx_kv_cache_free(&c, be);
}

int main(void) {
    nmlx_backend *be = NULL;
    if (nmlx_backend_cpu_create(1, &be) != NMLX_OK) {
        fprintf(stderr, "backend: %s\n", nmlx_last_error());
        return 1;
    }
    test_rope(be);
    test_kv_cache(be);
    nmlx_backend_free(be);
    return test_summary();
}
