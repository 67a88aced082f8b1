/* Encode throughput and load time of the nmlx tokenizer, one thread.
 *
 *   tok_bench DIR TEXTFILE [CHUNK_BYTES] [REPS]
 *
 * Loads DIR/tokenizer.json REPS times (best time), then encodes TEXTFILE in
 * chunks of about CHUNK_BYTES (cut at line ends) REPS times (best time), and
 * prints one JSON line: {"load_s":..,"encode_s":..,"bytes":..,"tokens":..}.
 * bench/tokenizer/bench.mjs runs the same chunks through HF tokenizers. */
#define _POSIX_C_SOURCE 200809L
#include "nmlx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: tok_bench DIR TEXTFILE [CHUNK_BYTES] [REPS]\n");
        return 2;
    }
    size_t chunk = argc > 3 ? (size_t)atol(argv[3]) : 4096;
    int reps = argc > 4 ? atoi(argv[4]) : 3;
    FILE *f = fopen(argv[2], "rb");
    if (!f) {
        perror(argv[2]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)sz + 1);
    if (!text || fread(text, 1, (size_t)sz, f) != (size_t)sz) {
        fprintf(stderr, "cannot read %s\n", argv[2]);
        return 1;
    }
    fclose(f);
    double best_load = 1e9;
    nmlx_tokenizer *tok = NULL;
    for (int r = 0; r < reps; r++) {
        nmlx_tokenizer_free(tok);
        double t0 = now();
        if (nmlx_tokenizer_load(argv[1], &tok) != NMLX_OK) {
            fprintf(stderr, "load: %s\n", nmlx_last_error());
            return 1;
        }
        double dt = now() - t0;
        if (dt < best_load) best_load = dt;
    }
    double best_enc = 1e9;
    size_t tokens = 0;
    for (int r = 0; r < reps; r++) {
        tokens = 0;
        double t0 = now();
        size_t off = 0;
        while (off < (size_t)sz) {
            size_t end = off + chunk < (size_t)sz ? off + chunk : (size_t)sz;
            while (end < (size_t)sz && text[end - 1] != '\n')
                end++; /* cut after a newline */
            int32_t *ids;
            size_t n;
            if (nmlx_tokenize(tok, text + off, end - off, 0, &ids, &n) != NMLX_OK) {
                fprintf(stderr, "encode: %s\n", nmlx_last_error());
                return 1;
            }
            tokens += n;
            nmlx_free(ids);
            off = end;
        }
        double dt = now() - t0;
        if (dt < best_enc) best_enc = dt;
    }
    printf("{\"load_s\":%.6f,\"encode_s\":%.6f,\"bytes\":%ld,\"tokens\":%zu}\n", best_load,
           best_enc, sz, tokens);
    nmlx_tokenizer_free(tok);
    free(text);
    return 0;
}
