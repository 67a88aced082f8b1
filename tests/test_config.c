/* config.json reader: typed getters (text_config first, then top level;
 * null/missing -> default; wrong types -> errors naming the field and the
 * file), eos lists, and RoPE settings in hub and transformers-5 forms.
 * Files are written to a mkdtemp folder under /tmp, removed at the end. */
#define _XOPEN_SOURCE 700
#include "harness.h"
#include "model_util.h"

#include "io/config.h"
#include "io/config_schema.h"
#include "shared/gemma3n_model.h"
#include "shared/llama4_model.h"
#include "shared/standard_model.h"

#include <math.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmp_root[64];

static char *write_cfg(const char *name, const char *text) {
    static char path[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(path[k], sizeof path[k], "%s/%s", tmp_root, name);
    FILE *f = fopen(path[k], "w");
    fputs(text, f);
    fclose(f);
    return path[k];
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static nmlx_cfg *parse(const char *json) {
    nmlx_cfg *c = NULL;
    nmlx_status st = nmlx_cfg_parse(json, "config.json", &c);
    EXPECT(st == NMLX_OK && c, "parse failed: %s", nmlx_last_error());
    return c;
}

static bool msg_has(const char *a, const char *b) {
    const char *m = nmlx_last_error();
    return strstr(m, a) && (!b || strstr(m, b));
}

/* ---- getters ----------------------------------------------------------- */

static void test_random_values(void) {
    /* random ints and floats written with full precision read back exactly */
    for (int round = 0; round < 20; round++) {
        int64_t ints[5];
        double floats[5];
        char json[2048];
        size_t n = (size_t)snprintf(json, sizeof json, "{");
        for (int i = 0; i < 5; i++) {
            ints[i] = (int64_t)(test_rand_u64() >> (1 + i * 12)) * (i % 2 ? -1 : 1);
            floats[i] = (double)test_randf(-1e3f, 1e3f) * pow(10.0, i * 3 - 6);
            n += (size_t)snprintf(json + n, sizeof json - n, "\"i%d\": %lld, \"f%d\": %.17g, ", i,
                                  (long long)ints[i], i, floats[i]);
        }
        snprintf(json + n, sizeof json - n, "\"b\": %s}", round % 2 ? "true" : "false");
        nmlx_cfg *c = parse(json);
        if (!c) return;
        for (int i = 0; i < 5; i++) {
            char k[8];
            int64_t iv = 0;
            double fv = 0;
            snprintf(k, sizeof k, "i%d", i);
            EXPECT(nmlx_cfg_int(c, k, 0, &iv) == NMLX_OK && iv == ints[i], "%s: %lld vs %lld", k,
                   (long long)iv, (long long)ints[i]);
            EXPECT(nmlx_cfg_float(c, k, 0, &fv) == NMLX_OK && fv == (double)ints[i], "%s as float",
                   k);
            snprintf(k, sizeof k, "f%d", i);
            EXPECT(nmlx_cfg_float(c, k, 0, &fv) == NMLX_OK && fv == floats[i], "%s: %.17g vs %.17g",
                   k, fv, floats[i]);
        }
        bool b = round % 2 == 0;
        EXPECT(nmlx_cfg_bool(c, "b", !b, &b) == NMLX_OK && b == (round % 2 == 1), "bool");
        nmlx_cfg_free(c);
    }
}

static void test_getters(void) {
    nmlx_cfg *c = parse(
        "{\"model_type\": \"gemma3\", \"num_hidden_layers\": 3, \"vocab_size\": 262208,"
        " \"hidden_act\": \"gelu\", \"rms_norm_eps\": 1e-6, \"head_dim\": 2.0,"
        " \"tie_word_embeddings\": null, \"bad_int\": 2.5, \"str_int\": \"3\", \"bool_int\": true,"
        " \"int_bool\": 1, \"num_str\": 7, \"huge\": 1e30,"
        " \"text_config\": {\"model_type\": \"gemma3_text\", \"hidden_size\": 640,"
        "   \"num_hidden_layers\": null, \"vocab_size\": 1000, \"rope_theta\": 5,"
        "   \"use_cache\": false}}");
    if (!c) return;
    int64_t i = -1;
    double f = -1;
    bool b = true;
    const char *s = NULL;
    EXPECT(!strcmp(nmlx_cfg_model_type(c), "gemma3"), "model_type is the top level's");
    EXPECT(!strcmp(nmlx_cfg_path(c), "config.json"), "path");
    /* text_config first, then the top level */
    EXPECT(nmlx_cfg_int(c, "hidden_size", 0, &i) == NMLX_OK && i == 640, "nested int");
    EXPECT(nmlx_cfg_int(c, "vocab_size", 0, &i) == NMLX_OK && i == 1000, "nested wins");
    EXPECT(nmlx_cfg_int(c, "num_hidden_layers", 0, &i) == NMLX_OK && i == 3,
           "null in text_config falls back to the top level");
    EXPECT(nmlx_cfg_float(c, "rope_theta", 0, &f) == NMLX_OK && f == 5.0, "int as float");
    EXPECT(nmlx_cfg_bool(c, "use_cache", true, &b) == NMLX_OK && !b, "nested bool");
    EXPECT(nmlx_cfg_string(c, "hidden_act", "silu", &s) == NMLX_OK && !strcmp(s, "gelu"), "string");
    EXPECT(nmlx_cfg_int(c, "head_dim", 0, &i) == NMLX_OK && i == 2, "2.0 is an integer");
    /* missing / null -> default */
    EXPECT(nmlx_cfg_int(c, "absent", 77, &i) == NMLX_OK && i == 77, "missing int default");
    EXPECT(nmlx_cfg_float(c, "absent", 0.25, &f) == NMLX_OK && f == 0.25, "missing float");
    b = false;
    EXPECT(nmlx_cfg_bool(c, "tie_word_embeddings", true, &b) == NMLX_OK && b, "null bool");
    EXPECT(nmlx_cfg_string(c, "absent", "silu", &s) == NMLX_OK && !strcmp(s, "silu"),
           "missing string");
    EXPECT(nmlx_cfg_has(c, "hidden_size") && nmlx_cfg_has(c, "num_hidden_layers") &&
               !nmlx_cfg_has(c, "tie_word_embeddings") && !nmlx_cfg_has(c, "absent"),
           "has");
    /* wrong types: the field and the file are named, the output untouched */
    i = 42;
    EXPECT(nmlx_cfg_int(c, "bad_int", 0, &i) == NMLX_ERR_FORMAT && i == 42 &&
               msg_has("'bad_int'", "config.json") && msg_has("integer", NULL),
           "2.5: %s", nmlx_last_error());
    EXPECT(nmlx_cfg_int(c, "str_int", 0, &i) == NMLX_ERR_FORMAT && msg_has("'str_int'", NULL),
           "string as int: %s", nmlx_last_error());
    EXPECT(nmlx_cfg_int(c, "bool_int", 0, &i) == NMLX_ERR_FORMAT && msg_has("'bool_int'", NULL),
           "bool as int: %s", nmlx_last_error());
    EXPECT(nmlx_cfg_int(c, "huge", 0, &i) == NMLX_ERR_FORMAT && msg_has("'huge'", NULL),
           "1e30 as int: %s", nmlx_last_error());
    EXPECT(nmlx_cfg_bool(c, "int_bool", false, &b) == NMLX_ERR_FORMAT &&
               msg_has("'int_bool'", NULL),
           "1 as bool: %s", nmlx_last_error());
    EXPECT(nmlx_cfg_float(c, "hidden_act", 0, &f) == NMLX_ERR_FORMAT &&
               msg_has("'hidden_act'", "number"),
           "string as float: %s", nmlx_last_error());
    EXPECT(nmlx_cfg_string(c, "num_str", NULL, &s) == NMLX_ERR_FORMAT &&
               msg_has("'num_str'", "string"),
           "number as string: %s", nmlx_last_error());
    EXPECT(nmlx_cfg_int(c, "text_config", 0, &i) == NMLX_ERR_FORMAT, "object as int");
    nmlx_cfg_free(c);

    c = parse("{\"architectures\": [\"X\"]}");
    EXPECT(c && !strcmp(nmlx_cfg_model_type(c), ""), "missing model_type is empty");
    nmlx_cfg_free(c);
    nmlx_cfg_free(NULL);
}

static void test_int_list(void) {
    nmlx_cfg *c =
        parse("{\"a\": 2, \"b\": [1, 106, 2.0], \"c\": null, \"d\": [], \"e\": [1, \"x\"],"
              " \"f\": [1,2,3,4,5], \"g\": \"2\", \"h\": 1.5}");
    if (!c) return;
    int64_t ids[4] = {0};
    size_t n = 99;
    EXPECT(nmlx_cfg_int_list(c, "a", ids, 4, &n) == NMLX_OK && n == 1 && ids[0] == 2, "scalar");
    EXPECT(nmlx_cfg_int_list(c, "b", ids, 4, &n) == NMLX_OK && n == 3 && ids[0] == 1 &&
               ids[1] == 106 && ids[2] == 2,
           "array");
    EXPECT(nmlx_cfg_int_list(c, "c", ids, 4, &n) == NMLX_OK && n == 0, "null");
    n = 99;
    EXPECT(nmlx_cfg_int_list(c, "absent", ids, 4, &n) == NMLX_OK && n == 0, "missing");
    EXPECT(nmlx_cfg_int_list(c, "d", ids, 4, &n) == NMLX_OK && n == 0, "empty array");
    n = 7;
    EXPECT(nmlx_cfg_int_list(c, "e", ids, 4, &n) == NMLX_ERR_FORMAT && n == 7 &&
               msg_has("'e'", "config.json"),
           "bad element: %s", nmlx_last_error());
    EXPECT(nmlx_cfg_int_list(c, "f", ids, 4, &n) == NMLX_ERR_UNSUPPORTED && msg_has("'f'", NULL),
           "too many: %s", nmlx_last_error());
    EXPECT(nmlx_cfg_int_list(c, "g", ids, 4, &n) == NMLX_ERR_FORMAT && msg_has("'g'", NULL),
           "string: %s", nmlx_last_error());
    EXPECT(nmlx_cfg_int_list(c, "h", ids, 4, &n) == NMLX_ERR_FORMAT && msg_has("'h'", NULL),
           "1.5: %s", nmlx_last_error());
    nmlx_cfg_free(c);
}

static void test_open(void) {
    char *p =
        write_cfg("config.json", "{\"model_type\": \"llama\",\n \"num_hidden_layers\": \"two\"}");
    nmlx_cfg *c = NULL;
    EXPECT(nmlx_cfg_open(p, &c) == NMLX_OK && c, "open: %s", nmlx_last_error());
    int64_t i;
    EXPECT(c && !strcmp(nmlx_cfg_path(c), p), "path kept");
    EXPECT(c && nmlx_cfg_int(c, "num_hidden_layers", 0, &i) == NMLX_ERR_FORMAT &&
               msg_has("config.json: field 'num_hidden_layers' must be an integer", p),
           "message: %s", nmlx_last_error());
    nmlx_cfg_free(c);

    c = NULL;
    char missing[600];
    snprintf(missing, sizeof missing, "%s/none/config.json", tmp_root);
    EXPECT(nmlx_cfg_open(missing, &c) == NMLX_ERR_IO && !c && msg_has(missing, NULL), "missing: %s",
           nmlx_last_error());
    p = write_cfg("bad.json", "{\"a\": 1,\n \"b\": [1, 2,\n}");
    EXPECT(nmlx_cfg_open(p, &c) == NMLX_ERR_FORMAT && !c && msg_has(p, "line 3"), "bad JSON: %s",
           nmlx_last_error());
    p = write_cfg("arr.json", "[1, 2]");
    EXPECT(nmlx_cfg_open(p, &c) == NMLX_ERR_FORMAT && !c && msg_has(p, "object"), "array: %s",
           nmlx_last_error());
    p = write_cfg("empty.json", "");
    EXPECT(nmlx_cfg_open(p, &c) == NMLX_ERR_FORMAT && !c && msg_has(p, NULL), "empty: %s",
           nmlx_last_error());
    p = write_cfg("tc.json", "{\"text_config\": 3}");
    EXPECT(nmlx_cfg_open(p, &c) == NMLX_ERR_FORMAT && !c && msg_has(p, "'text_config'"),
           "text_config: %s", nmlx_last_error());
    EXPECT(nmlx_cfg_open(tmp_root, &c) == NMLX_ERR_IO && !c && msg_has(tmp_root, NULL),
           "folder: %s", nmlx_last_error());
    EXPECT(nmlx_cfg_parse("{", "inline.json", &c) == NMLX_ERR_FORMAT &&
               msg_has("inline.json", "line"),
           "parse: %s", nmlx_last_error());
}

/* ---- RoPE --------------------------------------------------------------- */

static nmlx_rope_config rc; /* large: keep it off the stack */

static nmlx_status rope_of(const char *json, double def_theta) {
    nmlx_cfg *c = NULL;
    nmlx_status st = nmlx_cfg_parse(json, "config.json", &c);
    EXPECT(st == NMLX_OK, "rope config parse: %s", nmlx_last_error());
    if (st != NMLX_OK) return st;
    memset(&rc, 0x5a, sizeof rc); /* garbage: every field must be written */
    st = nmlx_cfg_rope(c, def_theta, &rc);
    nmlx_cfg_free(c);
    return st;
}

static bool rope_defaults_except_type_theta(void) {
    return rc.factor == 1 && rc.low_freq_factor == 1 && rc.high_freq_factor == 4 &&
           rc.original_max_position_embeddings == 0 && rc.beta_fast == 32 && rc.beta_slow == 1 &&
           rc.mscale == 1 && rc.mscale_all_dim == 0 && rc.attention_factor == 0 && rc.truncate &&
           rc.partial_rotary_factor == 1 && rc.n_short == 0 && rc.n_long == 0;
}

static void test_rope_hub(void) {
    EXPECT(rope_of("{\"hidden_size\": 8}", 10000) == NMLX_OK && !strcmp(rc.type, "default") &&
               rc.theta == 10000 && rope_defaults_except_type_theta(),
           "nothing given: %s", nmlx_last_error());
    EXPECT(rope_of("{\"rope_theta\": 1000000.0, \"rope_scaling\": null}", 1) == NMLX_OK &&
               !strcmp(rc.type, "default") && rc.theta == 1e6 && rope_defaults_except_type_theta(),
           "null scaling");
    EXPECT(rope_of("{\"rope_theta\": 500000.0, \"rope_scaling\": {\"factor\": 32.0,"
                   " \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0,"
                   " \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}}",
                   1) == NMLX_OK &&
               !strcmp(rc.type, "llama3") && rc.theta == 5e5 && rc.factor == 32 &&
               rc.low_freq_factor == 1 && rc.high_freq_factor == 4 &&
               rc.original_max_position_embeddings == 8192 && rc.n_short == 0,
           "llama3: %s", nmlx_last_error());
    EXPECT(rope_of("{\"rope_scaling\": {\"type\": \"LINEAR\", \"factor\": 4}}", 7) == NMLX_OK &&
               !strcmp(rc.type, "linear") && rc.factor == 4 && rc.theta == 7,
           "legacy linear, lowercased");
    EXPECT(rope_of("{\"rope_scaling\": {\"rope_type\": \"default\"}}", 3) == NMLX_OK &&
               !strcmp(rc.type, "default") && rope_defaults_except_type_theta(),
           "explicit default");
    EXPECT(rope_of("{\"rope_theta\": 10000, \"max_position_embeddings\": 131072,"
                   " \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0,"
                   " \"original_max_position_embeddings\": 32768, \"beta_fast\": 16,"
                   " \"beta_slow\": 2, \"mscale\": 0.707, \"mscale_all_dim\": 0.5,"
                   " \"attention_factor\": 1.25, \"truncate\": false}}",
                   1) == NMLX_OK &&
               !strcmp(rc.type, "yarn") && rc.factor == 4 &&
               rc.original_max_position_embeddings == 32768 && rc.beta_fast == 16 &&
               rc.beta_slow == 2 && rc.mscale == 0.707 && rc.mscale_all_dim == 0.5 &&
               rc.attention_factor == 1.25 && !rc.truncate,
           "yarn: %s", nmlx_last_error());
    /* Phi-3 style: longrope lists, original_max_position_embeddings and
     * partial_rotary_factor at the top level */
    char json[16384];
    double sf[48], lf[48];
    size_t n = (size_t)snprintf(json, sizeof json,
                                "{\"rope_theta\": 10000.0, \"partial_rotary_factor\": 0.75,"
                                " \"original_max_position_embeddings\": 4096,"
                                " \"rope_scaling\": {\"type\": \"longrope\", \"short_factor\": [");
    for (int i = 0; i < 48; i++) {
        sf[i] = test_randf(1.0f, 1.2f);
        n += (size_t)snprintf(json + n, sizeof json - n, "%s%.17g", i ? "," : "", sf[i]);
    }
    n += (size_t)snprintf(json + n, sizeof json - n, "], \"long_factor\": [");
    for (int i = 0; i < 48; i++) {
        lf[i] = (double)test_randf(1.0f, 60.0f);
        n += (size_t)snprintf(json + n, sizeof json - n, "%s%.17g", i ? "," : "", lf[i]);
    }
    snprintf(json + n, sizeof json - n, "]}}");
    EXPECT(rope_of(json, 1) == NMLX_OK && !strcmp(rc.type, "longrope") && rc.n_short == 48 &&
               rc.n_long == 48 && rc.original_max_position_embeddings == 4096 &&
               rc.partial_rotary_factor == 0.75 && rc.factor == 1,
           "longrope: %s", nmlx_last_error());
    bool same = true;
    for (int i = 0; i < 48; i++)
        same = same && rc.short_factor[i] == sf[i] && rc.long_factor[i] == lf[i];
    EXPECT(same, "longrope factors read back exactly");
    /* inside the object wins over the top level */
    EXPECT(rope_of("{\"original_max_position_embeddings\": 4096, \"partial_rotary_factor\": 0.5,"
                   " \"rope_scaling\": {\"type\": \"su\", \"original_max_position_embeddings\":"
                   " 2048, \"partial_rotary_factor\": 0.25, \"short_factor\": [1],"
                   " \"long_factor\": [1]}}",
                   1) == NMLX_OK &&
               !strcmp(rc.type, "su") && rc.original_max_position_embeddings == 2048 &&
               rc.partial_rotary_factor == 0.25,
           "su");
    /* a type transformers knows but nmlx does not compute: unsupported;
     * a type nobody knows: outside the domain (transformers refuses it) */
    EXPECT(
        rope_of("{\"rope_scaling\": {\"rope_type\": \"mrope\", \"mrope_section\": [16, 24, 24]}}",
                1) == NMLX_ERR_UNSUPPORTED &&
            strstr(nmlx_last_error(), "rope_scaling.rope_type") &&
            strstr(nmlx_last_error(), "mrope"),
        "mrope is known but unsupported: %s", nmlx_last_error());
    EXPECT(rope_of("{\"rope_scaling\": {\"rope_type\": \"weird_new_kind\", \"factor\": 2}}", 1) ==
                   NMLX_ERR_INVALID_MODEL &&
               strstr(nmlx_last_error(), "rope_scaling.rope_type") &&
               strstr(nmlx_last_error(), "weird_new_kind"),
           "unknown types fail the load: %s", nmlx_last_error());
    EXPECT(rope_of("{\"rope_parameters\": {\"type\": \"\"}}", 1) == NMLX_ERR_INVALID_MODEL &&
               strstr(nmlx_last_error(), "rope_parameters.type"),
           "an empty type fails: %s", nmlx_last_error());
    /* text_config holds the rope settings of a multimodal model */
    EXPECT(rope_of("{\"rope_theta\": 1.0, \"text_config\": {\"rope_theta\": 1000000,"
                   " \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 8}}}",
                   1) == NMLX_OK &&
               rc.theta == 1e6 && !strcmp(rc.type, "linear") && rc.factor == 8,
           "nested rope");
}

static void test_rope_parameters(void) {
    EXPECT(rope_of("{\"rope_theta\": 5.0, \"rope_parameters\": {\"rope_type\": \"llama3\","
                   " \"rope_theta\": 500000.0, \"factor\": 8.0, \"low_freq_factor\": 1.0,"
                   " \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}",
                   1) == NMLX_OK &&
               !strcmp(rc.type, "llama3") && rc.theta == 5e5 && rc.factor == 8 &&
               rc.original_max_position_embeddings == 8192,
           "transformers 5 flat: %s", nmlx_last_error());
    EXPECT(rope_of("{\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 1e6}}", 1) ==
                   NMLX_OK &&
               !strcmp(rc.type, "default") && rc.theta == 1e6 && rope_defaults_except_type_theta(),
           "transformers 5 default");
    EXPECT(rope_of("{\"rope_theta\": 20000, \"rope_parameters\": {\"rope_type\": \"linear\","
                   " \"factor\": 2}}",
                   1) == NMLX_OK &&
               rc.theta == 20000 && rc.factor == 2,
           "theta falls back to the top level");
    /* Gemma 3: one entry per layer type; full_attention is used */
    EXPECT(rope_of("{\"rope_parameters\": {\"sliding_attention\": {\"rope_type\": \"default\","
                   " \"rope_theta\": 10000.0}, \"full_attention\": {\"rope_type\": \"linear\","
                   " \"factor\": 8.0, \"rope_theta\": 1000000.0}}}",
                   1) == NMLX_OK &&
               !strcmp(rc.type, "linear") && rc.factor == 8 && rc.theta == 1e6,
           "per layer type: %s", nmlx_last_error());
    EXPECT(rope_of("{\"rope_parameters\": {\"sliding_attention\": {\"rope_theta\": 10000.0}}}",
                   1) == NMLX_ERR_INVALID_MODEL &&
               msg_has("rope_parameters", "full_attention"),
           "per layer type without full_attention: %s", nmlx_last_error());
    EXPECT(rope_of("{\"rope_parameters\": {\"full_attention\": {\"rope_type\": \"yarn\","
                   " \"factor\": \"big\"}}}",
                   1) == NMLX_ERR_FORMAT &&
               msg_has("'rope_parameters.full_attention.factor'", "config.json"),
           "bad nested factor: %s", nmlx_last_error());
}

static void test_rope_errors(void) {
    EXPECT(rope_of("{\"rope_scaling\": \"linear\"}", 1) == NMLX_ERR_FORMAT &&
               msg_has("'rope_scaling'", "config.json"),
           "scaling not an object: %s", nmlx_last_error());
    EXPECT(rope_of("{\"rope_parameters\": [1]}", 1) == NMLX_ERR_FORMAT &&
               msg_has("'rope_parameters'", NULL),
           "parameters not an object: %s", nmlx_last_error());
    EXPECT(rope_of("{\"rope_scaling\": {\"type\": \"linear\", \"factor\": \"4\"}}", 1) ==
                   NMLX_ERR_FORMAT &&
               msg_has("'rope_scaling.factor'", NULL),
           "factor string: %s", nmlx_last_error());
    EXPECT(rope_of("{\"rope_scaling\": {\"rope_type\": 3}}", 1) == NMLX_ERR_FORMAT &&
               msg_has("'rope_scaling.rope_type'", NULL),
           "type number: %s", nmlx_last_error());
    EXPECT(rope_of("{\"rope_theta\": \"1e4\"}", 1) == NMLX_ERR_FORMAT &&
               msg_has("'rope_theta'", NULL),
           "theta string: %s", nmlx_last_error());
    EXPECT(rope_of("{\"rope_scaling\": {\"type\": \"yarn\", \"truncate\": 0}}", 1) ==
                   NMLX_ERR_FORMAT &&
               msg_has("'rope_scaling.truncate'", NULL),
           "truncate 0: %s", nmlx_last_error());
    EXPECT(rope_of("{\"rope_scaling\": {\"type\": \"longrope\", \"long_factor\": [1, \"x\"]}}",
                   1) == NMLX_ERR_FORMAT &&
               msg_has("'rope_scaling.long_factor'", NULL),
           "factor list element: %s", nmlx_last_error());
    EXPECT(rope_of("{\"rope_scaling\": {\"type\": \"longrope\","
                   " \"original_max_position_embeddings\": 4096.5}}",
                   1) == NMLX_ERR_FORMAT &&
               msg_has("original_max_position_embeddings", NULL),
           "fractional original_max: %s", nmlx_last_error());
    /* longer than NMLX_ROPE_MAX_FACTORS */
    size_t cap = 8 * (NMLX_ROPE_MAX_FACTORS + 8) + 128, n = 0;
    char *json = malloc(cap);
    n += (size_t)snprintf(json, cap,
                          "{\"rope_scaling\": {\"type\": \"longrope\", \"short_factor\": [");
    for (int i = 0; i <= NMLX_ROPE_MAX_FACTORS; i++)
        n += (size_t)snprintf(json + n, cap - n, "%s1.5", i ? "," : "");
    snprintf(json + n, cap - n, "]}}");
    EXPECT(rope_of(json, 1) == NMLX_ERR_UNSUPPORTED && msg_has("'rope_scaling.short_factor'", NULL),
           "too many factors: %s", nmlx_last_error());
    free(json);
    /* the output is untouched on failure */
    nmlx_cfg *c = NULL;
    nmlx_cfg_parse("{\"rope_scaling\": {\"factor\": null, \"beta_fast\": []}}", "x.json", &c);
    memset(&rc, 0x11, sizeof rc);
    unsigned char before = ((unsigned char *)&rc)[0];
    EXPECT(c && nmlx_cfg_rope(c, 1, &rc) == NMLX_ERR_FORMAT &&
               ((unsigned char *)&rc)[0] == before && msg_has("x.json", "'rope_scaling.beta_fast'"),
           "untouched on failure: %s", nmlx_last_error());
    nmlx_cfg_free(c);
}

static void test_fault_injection(void) {
    char *p = write_cfg("fi.json", "{\"model_type\": \"llama\", \"rope_theta\": 1e4,"
                                   " \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}}");
    int ok = 0, nomem = 0, other = 0;
    for (long k = 1; k < 50 && !ok; k++) {
        nmlx_cfg *c = NULL;
        nmlx_test_fail_alloc_after(k);
        nmlx_status st = nmlx_cfg_open(p, &c);
        if (st == NMLX_OK) st = nmlx_cfg_rope(c, 1, &rc);
        nmlx_test_fail_alloc_after(0);
        if (st == NMLX_OK)
            ok++;
        else if (st == NMLX_ERR_NOMEM)
            nomem++;
        else
            other++;
        nmlx_cfg_free(c);
    }
    EXPECT(ok == 1 && nomem >= 3 && other == 0, "fault injection: %d ok, %d nomem, %d other", ok,
           nomem, other);
}

/* ---- the domain table ---------------------------------------------------- */

static char *slurp(const char *rel) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", test_src_dir(), rel);
    return test_read_file(path, NULL);
}

static bool doc_names(const char *doc, const char *key) {
    char q[128];
    snprintf(q, sizeof q, "`%s`", key);
    return strstr(doc, q) != NULL;
}

/* Every value the model builders read goes through a getter with a string
 * key: each key must have a domain in config_schema.c (booleans excepted:
 * their type is their domain) and a row in docs/config_fields.md; every
 * table entry must be documented. */
static void test_schema_coverage(void) {
    char *doc = slurp("docs/config_fields.md");
    EXPECT(doc != NULL, "docs/config_fields.md readable");
    if (!doc) return;
    for (const nmlx_domain *d = nmlx_domain_table(); d->field; d++) {
        const char *dot = strrchr(d->field, '.');
        const char *key = dot ? dot + 1 : d->field;
        EXPECT(doc_names(doc, key), "docs/config_fields.md has no row for '%s'", d->field);
        if ((d->kind & 7) == NMLX_DOM_ENUM)
            for (const char *const *v = d->supported; v && *v; v++) {
                bool known = false;
                for (const char *const *k = d->known; *k; k++)
                    known = known || !strcmp(*k, *v);
                EXPECT(known, "%s: supported value '%s' is not in the known list", d->field, *v);
            }
    }
    static const char *const files[] = {"src/shared/standard_model.c", "src/shared/gemma3n_model.c",
                                        "src/shared/llama4_model.c", "src/shared/rope_setup.c",
                                        "src/model.c"};
    static const char *const getters[] = {"nmlx_cfg_int(",          "nmlx_cfg_float(",
                                          "nmlx_cfg_string(",       "nmlx_cfg_int_list(",
                                          "nmlx_cfg_float_list(",   "nmlx_cfg_string_list(",
                                          "nmlx_cfg_required_int(", "nmlx_cfg_positive_int(",
                                          "nmlx_cfg_bool(",         "nmlx_cfg_feature("};
    int seen = 0;
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        char *src = slurp(files[f]);
        EXPECT(src != NULL, "%s readable", files[f]);
        for (size_t g = 0; src && g < sizeof getters / sizeof getters[0]; g++)
            for (const char *p = strstr(src, getters[g]); p; p = strstr(p + 1, getters[g])) {
                if (p > src && (p[-1] == '_' || (p[-1] >= 'a' && p[-1] <= 'z'))) continue;
                const char *end = strchr(p, ';');
                const char *q = strchr(p, '"');
                if (!end || !q || q > end) continue; /* key from a variable (def->act_key) */
                const char *e = strchr(q + 1, '"');
                if (!e) continue;
                char key[96];
                snprintf(key, sizeof key, "%.*s", (int)(e - q - 1), q + 1);
                if (strchr(key, ' ') || strchr(key, '%')) continue; /* a message */
                seen++;
                bool is_bool = g >= 8;
                EXPECT(is_bool || nmlx_domain_find(key), "%s reads '%s' without a domain", files[f],
                       key);
                EXPECT(doc_names(doc, key), "%s reads '%s': not in docs/config_fields.md", files[f],
                       key);
            }
        free(src);
    }
    EXPECT(seen > 40, "config keys found in the sources: %d", seen);
    /* keys passed through the model-defs */
    EXPECT(nmlx_domain_find("hidden_activation") && nmlx_domain_find("moe_intermediate_size"),
           "model-def keys have domains");
    /* the domain rule itself */
    EXPECT(nmlx_domain_check_num("c.json", "rms_norm_eps", "rms_norm_eps", 0) ==
                   NMLX_ERR_INVALID_MODEL &&
               strstr(nmlx_last_error(), "c.json") && strstr(nmlx_last_error(), "'rms_norm_eps'") &&
               strstr(nmlx_last_error(), "= 0"),
           "domain message: %s", nmlx_last_error());
    EXPECT(nmlx_domain_check_num("c.json", "x", "rms_norm_eps", NAN) == NMLX_ERR_INVALID_MODEL &&
               nmlx_domain_check_num("c.json", "x", "rope_theta", INFINITY) ==
                   NMLX_ERR_INVALID_MODEL &&
               nmlx_domain_check_num("c.json", "x", "top_p", 1.0) == NMLX_OK &&
               nmlx_domain_check_num("c.json", "x", "head_dim", 2.5) == NMLX_ERR_INVALID_MODEL &&
               nmlx_domain_check_num("c.json", "x", "not_in_table", NAN) == NMLX_OK,
           "non-finite and fractional values");
    EXPECT(nmlx_domain_check_str("c.json", "hidden_act", "hidden_act", "relu") ==
                   NMLX_ERR_UNSUPPORTED &&
               nmlx_domain_check_str("c.json", "hidden_act", "hidden_act", "Silu") ==
                   NMLX_ERR_INVALID_MODEL &&
               nmlx_domain_check_str("c.json", "hidden_act", "hidden_act", "gelu") == NMLX_OK,
           "enum check");
    /* JSON that cannot hold the value: the message names the field */
    static const char *const lits[][2] = {
        {"{\"a\": 1,\n \"rope_theta\": NaN}", "'rope_theta'"},
        {"{\"rope_scaling\": {\"factor\": Infinity}}", "'factor'"},
        {"{\"eos_token_id\": [1, 2, -Infinity]}", "'eos_token_id'"},
        {"{\"x\": {\"y\": 1}, \"rms_norm_eps\": 1e400}", "'rms_norm_eps'"},
    };
    for (size_t k = 0; k < sizeof lits / sizeof lits[0]; k++) {
        nmlx_cfg *bad = NULL;
        EXPECT(nmlx_cfg_parse(lits[k][0], "config.json", &bad) == NMLX_ERR_FORMAT && !bad &&
                   strstr(nmlx_last_error(), lits[k][1]),
               "%s: %s", lits[k][0], nmlx_last_error());
    }
    /* getters apply it */
    nmlx_cfg *c = NULL;
    EXPECT(nmlx_cfg_parse("{\"model_type\":\"x\",\"rms_norm_eps\":-1,\"vocab_size\":0,"
                          "\"eos_token_id\":[1,-2],\"layer_types\":[\"full_attention\",\"nope\"],"
                          "\"hidden_act\":\"swiglu\"}",
                          "config.json", &c) == NMLX_OK,
           "parse");
    double f;
    int64_t i, ids[4];
    size_t n;
    const char *s, *types[4];
    EXPECT(nmlx_cfg_float(c, "rms_norm_eps", 1e-6, &f) == NMLX_ERR_INVALID_MODEL &&
               strstr(nmlx_last_error(), "'rms_norm_eps' = -1"),
           "float getter: %s", nmlx_last_error());
    EXPECT(nmlx_cfg_int(c, "vocab_size", 1, &i) == NMLX_ERR_INVALID_MODEL, "int getter");
    EXPECT(nmlx_cfg_int_list(c, "eos_token_id", ids, 4, &n) == NMLX_ERR_INVALID_MODEL &&
               strstr(nmlx_last_error(), "'eos_token_id[1]' = -2"),
           "int list getter: %s", nmlx_last_error());
    EXPECT(nmlx_cfg_string_list(c, "layer_types", types, 4, &n) == NMLX_ERR_INVALID_MODEL &&
               strstr(nmlx_last_error(), "'layer_types[1]' = 'nope'"),
           "string list getter: %s", nmlx_last_error());
    EXPECT(nmlx_cfg_string(c, "hidden_act", "silu", &s) == NMLX_ERR_INVALID_MODEL &&
               strstr(nmlx_last_error(), "swiglu"),
           "string getter: %s", nmlx_last_error());
    EXPECT(nmlx_cfg_float(c, "absent_key", 5, &f) == NMLX_OK && f == 5, "defaults unchecked");
    nmlx_cfg_free(c);
    free(doc);
}

/* The model-defs' config defaults (tools/hf2c/model-defs, emitted into
 * src/generated/) lie in the same domains as the values a file may give. */
static void test_family_defaults(void) {
    int n = 0;
    for (size_t i = 0; nmlx_families[i]; i++) {
        const nmlx_family *f = nmlx_families[i];
        double eps, theta, local = 0;
        int64_t maxpos, hd;
        const char *act, *act_key;
        if (f->build == nmlx_std_build) {
            const nmlx_std_def *d = f->def;
            eps = d->rms_norm_eps, theta = d->rope_theta, maxpos = d->max_position_embeddings;
            hd = d->head_dim, act = d->hidden_act;
            act_key = d->act_key ? d->act_key : "hidden_act";
            if (d->local_rope) local = d->rope_local_theta;
            if (d->sliding_window_default)
                EXPECT(nmlx_domain_check_int(f->name, "sliding_window", "sliding_window",
                                             d->sliding_window_default) == NMLX_OK,
                       "%s", nmlx_last_error());
        } else if (f->build == nmlx_g3n_build) {
            const nmlx_g3n_def *d = f->def;
            eps = d->rms_norm_eps, theta = d->rope_theta, maxpos = d->max_position_embeddings;
            hd = d->head_dim, act = d->hidden_act, act_key = d->act_key;
            local = d->rope_local_theta;
            EXPECT(nmlx_domain_check_int(f->name, "laurel_rank", "laurel_rank", d->laurel_rank) ==
                           NMLX_OK &&
                       nmlx_domain_check_int(f->name, "altup_num_inputs", "altup_num_inputs",
                                             d->altup_num_inputs) == NMLX_OK &&
                       nmlx_domain_check_num(f->name, "final_logit_softcapping",
                                             "final_logit_softcapping",
                                             d->final_logit_softcapping) == NMLX_OK,
                   "%s", nmlx_last_error());
        } else if (f->build == nmlx_l4_build) {
            const nmlx_l4_def *d = f->def;
            eps = d->rms_norm_eps, theta = d->rope_theta, maxpos = d->max_position_embeddings;
            hd = d->head_dim, act = d->hidden_act, act_key = "hidden_act";
            EXPECT(nmlx_domain_check_int(f->name, "attention_chunk_size", "attention_chunk_size",
                                         d->attention_chunk_size) == NMLX_OK &&
                       nmlx_domain_check_num(f->name, "floor_scale", "floor_scale",
                                             d->floor_scale) == NMLX_OK &&
                       nmlx_domain_check_num(f->name, "attn_scale", "attn_scale", d->attn_scale) ==
                           NMLX_OK &&
                       nmlx_domain_check_int(f->name, "interleave_moe_layer_step",
                                             "interleave_moe_layer_step",
                                             d->interleave_moe_layer_step) == NMLX_OK &&
                       nmlx_domain_check_int(f->name, "no_rope_layer_interval",
                                             "no_rope_layer_interval",
                                             d->no_rope_layer_interval) == NMLX_OK &&
                       (!d->intermediate_size_mlp ||
                        nmlx_domain_check_int(f->name, "intermediate_size_mlp",
                                              "intermediate_size_mlp",
                                              d->intermediate_size_mlp) == NMLX_OK),
                   "%s", nmlx_last_error());
        } else {
            EXPECT(0, "family %s: unknown def type", f->name);
            continue;
        }
        EXPECT(nmlx_domain_check_num(f->name, "rms_norm_eps", "rms_norm_eps", eps) == NMLX_OK &&
                   nmlx_domain_check_num(f->name, "rope_theta", "rope_theta", theta) == NMLX_OK &&
                   (!local || nmlx_domain_check_num(f->name, "rope_local_base_freq",
                                                    "rope_local_base_freq", local) == NMLX_OK) &&
                   nmlx_domain_check_int(f->name, "max_position_embeddings",
                                         "max_position_embeddings", maxpos) == NMLX_OK &&
                   (!hd || nmlx_domain_check_int(f->name, "head_dim", "head_dim", hd) == NMLX_OK) &&
                   nmlx_domain_check_str(f->name, act_key, act_key, act) == NMLX_OK,
               "family %s defaults: %s", f->name, nmlx_last_error());
        n++;
    }
    EXPECT(n >= 12, "families checked: %d", n);
}

int main(void) {
    test_seed(77);
    snprintf(tmp_root, sizeof tmp_root, "/tmp/nmlx_cfg_XXXXXX");
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    test_random_values();
    test_getters();
    test_int_list();
    test_open();
    test_rope_hub();
    test_rope_parameters();
    test_rope_errors();
    test_fault_injection();
    test_schema_coverage();
    test_family_defaults();
    nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_summary();
}
