/* The per-machine cache of the CPU kernel picks (src/compute/cpu/pick_cache.h):
 * records round-trip; foreign, malformed and truncated records read as
 * absent and leave the caller's values alone; NMLX_PICK_CACHE=0 and an
 * unwritable directory write nothing and leave no temporary file; the
 * directory follows NMLX_CACHE_DIR, XDG_CACHE_HOME, HOME. Then, in child
 * processes (a pick is measured once per process), the kernel picks
 * themselves: a first process stores what it measured, and a later one
 * takes a record altered on disk, so it reads the record instead of
 * measuring; NMLX_QUANT_PICK_LOG measures again and rewrites it. */
#define _DEFAULT_SOURCE /* mkdtemp, setenv */
#include "compute/cpu/matmul_amx.h"
#include "compute/cpu/pick_cache.h"
#include "compute/cpu/quant_kernels.h"
#include "harness.h"

#include <dirent.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char root[64];

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char *buf = calloc(1, 4096);
    size_t n = fread(buf, 1, 4095, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

/* Files in dir whose name contains `part` (and the first one's path). */
static int count_files(const char *dir, const char *part, char *first, size_t cap) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strstr(e->d_name, part)) continue;
        if (!n && first) snprintf(first, cap, "%s/%s", dir, e->d_name);
        n++;
    }
    closedir(d);
    return n;
}

static void test_round_trip(void) {
    char dir[128], path[4096];
    snprintf(dir, sizeof dir, "%s/a/b/c", root); /* created on the first store */
    setenv("NMLX_CACHE_DIR", dir, 1);
    const int v[3] = {1, 0, 37};
    nmlx_pick_cache_store("unit", "feat=1", v, 3);
    int got[3] = {-5, -5, -5};
    EXPECT(nmlx_pick_cache_load("unit", "feat=1", got, 3), "a stored record reads back");
    EXPECT(got[0] == 1 && got[1] == 0 && got[2] == 37, "values %d %d %d", got[0], got[1], got[2]);
    EXPECT(nmlx_pick_cache_path("unit", "feat=1", path, sizeof path) &&
               !strncmp(path, dir, strlen(dir)),
           "the record lies in NMLX_CACHE_DIR: %s", path);

    int keep[4] = {-5, -5, -5, -5};
    EXPECT(!nmlx_pick_cache_load("unit", "feat=2", keep, 3), "other features: another machine's");
    EXPECT(!nmlx_pick_cache_load("other", "feat=1", keep, 3), "another pick's name");
    EXPECT(!nmlx_pick_cache_load("unit", "feat=1", keep, 2), "fewer values than stored");
    EXPECT(!nmlx_pick_cache_load("unit", "feat=1", keep, 4), "more values than stored");
    EXPECT(keep[0] == -5 && keep[1] == -5 && keep[2] == -5 && keep[3] == -5,
           "a failed load leaves the values alone");
    EXPECT(!nmlx_pick_cache_load("a/b", "feat=1", keep, 3), "a name with a slash");
    EXPECT(!nmlx_pick_cache_load("unit", "feat=1", keep, 0), "no values");

    const int w[3] = {0, 1, 24};
    nmlx_pick_cache_store("unit", "feat=1", w, 3);
    EXPECT(nmlx_pick_cache_load("unit", "feat=1", got, 3) && got[0] == 0 && got[1] == 1 &&
               got[2] == 24,
           "a second store replaces the record");
    EXPECT(count_files(dir, ".tmp.", NULL, 0) == 0, "no temporary file is left behind");
    EXPECT(count_files(dir, "cpu-pick-unit-", NULL, 0) == 1, "one record per pick and machine");
}

static void test_malformed(void) {
    char path[4096];
    if (!nmlx_pick_cache_path("unit", "feat=1", path, sizeof path)) {
        EXPECT(0, "no record path");
        return;
    }
    char *good = read_text(path);
    EXPECT(good && strstr(good, "values: 0 1 24\n"), "record layout: %s", good ? good : "(none)");
    if (!good) return;
    const char *key_line = strstr(good, "key: ");
    char key[1024] = "";
    if (key_line) sscanf(key_line, "key: %1023[^\n]", key);
    char text[2048];
    const char *bad[] = {
        "",
        "nmlx cpu kernel pick\n",
        "nmlx cpu kernel pick\nkey: nope\nvalues: 0 1 24\n",
        "other magic\nkey: %s\nvalues: 0 1 24\n",
        "nmlx cpu kernel pick\nkey: %s\nvalues: 0 x 24\n",
        "nmlx cpu kernel pick\nkey: %s\nvalues: 0 1\n",
        "nmlx cpu kernel pick\nkey: %s\nvalues: 0 1 24 5\n",
        "nmlx cpu kernel pick\nkey: %s\nvalues: 0 1 99999999999\n",
        "nmlx cpu kernel pick\nkey: %s\nvalues: 0 1 24\nextra\n",
        "nmlx cpu kernel pick\nkey: %s\nvalues: 0 1 2.5\n",
        "nmlx cpu kernel pick\nkey: %s\n",
        "nmlx cpu kernel pick\nkey: %s",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(text, sizeof text, bad[i], key);
        write_text(path, text);
        int keep[3] = {-5, -5, -5};
        EXPECT(!nmlx_pick_cache_load("unit", "feat=1", keep, 3) && keep[0] == -5 && keep[2] == -5,
               "malformed record %zu reads as absent", i);
    }
    /* a record longer than any real one (say a stray large file) */
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "nmlx cpu kernel pick\nkey: %s\nvalues: 0 1 24\n", key);
        for (int i = 0; i < 4000; i++)
            fputc(' ', f);
        fclose(f);
    }
    int keep[3] = {-5, -5, -5};
    EXPECT(!nmlx_pick_cache_load("unit", "feat=1", keep, 3), "an oversized record reads as absent");
    write_text(path, good); /* and the original reads again */
    EXPECT(nmlx_pick_cache_load("unit", "feat=1", keep, 3) && keep[2] == 24, "the restored record");
    free(good);
}

static void test_off_and_unwritable(void) {
    char dir[128], path[4096];
    snprintf(dir, sizeof dir, "%s/off", root);
    setenv("NMLX_CACHE_DIR", dir, 1);
    setenv("NMLX_PICK_CACHE", "0", 1);
    const int v[1] = {1};
    nmlx_pick_cache_store("unit", "", v, 1);
    struct stat st;
    EXPECT(stat(dir, &st) != 0, "NMLX_PICK_CACHE=0 writes nothing");
    EXPECT(!nmlx_pick_cache_path("unit", "", path, sizeof path), "NMLX_PICK_CACHE=0: no path");
    unsetenv("NMLX_PICK_CACHE");

    /* a directory below a regular file cannot be made */
    char file[128], below[160];
    snprintf(file, sizeof file, "%s/plain", root);
    write_text(file, "x");
    snprintf(below, sizeof below, "%s/sub", file);
    setenv("NMLX_CACHE_DIR", below, 1);
    nmlx_pick_cache_store("unit", "", v, 1);
    int got = -5;
    EXPECT(!nmlx_pick_cache_load("unit", "", &got, 1) && got == -5,
           "an unwritable cache stays empty");
    EXPECT(count_files(root, ".tmp.", NULL, 0) == 0, "no temporary file is left behind");
}

static void test_directory_choice(void) {
    char path[4096], want[256];
    unsetenv("NMLX_CACHE_DIR");
    setenv("XDG_CACHE_HOME", "/xdg/cache", 1);
    EXPECT(nmlx_pick_cache_path("unit", "", path, sizeof path) &&
               !strncmp(path, "/xdg/cache/nmlx/", 16),
           "XDG_CACHE_HOME/nmlx: %s", path);
    setenv("XDG_CACHE_HOME", "relative", 1); /* not absolute: ignored, as the XDG spec says */
    setenv("HOME", "/home/someone", 1);
    snprintf(want, sizeof want, "/home/someone/.cache/nmlx/");
    EXPECT(nmlx_pick_cache_path("unit", "", path, sizeof path) &&
               !strncmp(path, want, strlen(want)),
           "HOME/.cache/nmlx: %s", path);
    unsetenv("XDG_CACHE_HOME");
    unsetenv("HOME");
    EXPECT(!nmlx_pick_cache_path("unit", "", path, sizeof path), "no directory known: no cache");
}

/* Runs fn in a child process with the cache in dir and extra env; returns
 * what fn returns (its exit status), -1 if it did not exit normally. */
static int in_child(const char *dir, const char *env, int (*fn)(void)) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("NMLX_CACHE_DIR", dir, 1);
        if (env) putenv((char *)env);
        _exit(fn());
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
    return WEXITSTATUS(status);
}

/* The avx512 pick's first six record values (0/1 each: the bf16 and VNNI
 * kernels; AMX, next in the record, is left as measured). */
static int avx512_bits(void) {
    nmlx_qbf16_pick p = nmlx_qbf16_get_pick();
    return p.prefill | p.matvec << 1 | p.matvec_int16 << 2 | p.matvec_int16_q8 << 3 |
           p.prefill_int16 << 4 | p.dense_bf16 << 5;
}

static int avx2_bit(void) { return nmlx_avx2_quant_int16_default(); }

/* Rewrites the record's first n values to the bits of `bits`. */
static bool set_record_bits(const char *path, int bits, int n) {
    char *t = read_text(path);
    char *vals = t ? strstr(t, "values:") : NULL;
    if (!vals) {
        free(t);
        return false;
    }
    char *p = vals + 7;
    for (int i = 0; i < n; i++) {
        while (*p == ' ')
            p++;
        if (*p != '0' && *p != '1') {
            free(t);
            return false;
        }
        *p++ = (char)('0' + ((bits >> i) & 1));
    }
    write_text(path, t);
    free(t);
    return true;
}

static void test_pick(const char *what, int (*fn)(void), int n_bits) {
    char dir[128], rec[4096], part[64];
    snprintf(dir, sizeof dir, "%s/pick-%s", root, what);
    snprintf(part, sizeof part, "cpu-pick-%s-", what);
    int first = in_child(dir, NULL, fn);
    EXPECT(first >= 0, "%s: the first process measured", what);
    EXPECT(count_files(dir, part, rec, sizeof rec) == 1, "%s: it stored one record", what);
    int again = in_child(dir, NULL, fn);
    EXPECT(again == first, "%s: a second process takes the same pick (%d, %d)", what, again, first);
    /* the record altered on disk: a later process must take it as written */
    const int altered = first ^ ((1 << n_bits) - 1);
    EXPECT(set_record_bits(rec, altered, n_bits), "%s: record rewritten", what);
    int read = in_child(dir, NULL, fn);
    EXPECT(read == altered, "%s: the pick comes from the record (%d, want %d)", what, read,
           altered);
    /* NMLX_QUANT_PICK_LOG measures again and stores what it measured */
    int measured = in_child(dir, "NMLX_QUANT_PICK_LOG=1", fn);
    int after = in_child(dir, NULL, fn);
    EXPECT(measured >= 0 && after == measured, "%s: a logged run rewrites the record (%d, %d)",
           what, measured, after);
    /* a forced kernel bypasses the cache: the record is neither read nor changed */
    char *before = read_text(rec);
    in_child(dir, "NMLX_QUANT_INT16=0", fn);
    char *later = read_text(rec);
    EXPECT(before && later && !strcmp(before, later), "%s: a forced run leaves the record alone",
           what);
    free(before);
    free(later);
}

/* A record that asks for AMX on a CPU without it is not taken (on a CPU
 * with AMX, one that asks for the quantized AMX prefill with 2 terms, which
 * the measurement never stores). */
static void test_foreign_isa(void) {
    char dir[128], rec[4096];
    snprintf(dir, sizeof dir, "%s/pick-avx512", root);
    if (count_files(dir, "cpu-pick-avx512-", rec, sizeof rec) != 1) return;
    char *t = read_text(rec);
    char *vals = t ? strstr(t, "values:") : NULL;
    int v[11];
    if (!vals || sscanf(vals, "values: %d %d %d %d %d %d %d %d %d %d %d", &v[0], &v[1], &v[2],
                        &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9], &v[10]) != 11) {
        EXPECT(0, "avx512 record unreadable");
        free(t);
        return;
    }
    const bool has_amx = strstr(t, "amx=1") != NULL, has_amx8 = strstr(t, "amx8=1") != NULL;
    /* records of a build with another AMX quantized default (matmul_amx.h:
     * 3 terms timed, or another count untimed) have another key */
    char terms[32];
    snprintf(terms, sizeof terms, "amxq-terms=%d",
             strstr(t, "amxq=1") ? NMLX_AMX_QUANT_DEFAULT_TERMS : 0);
    EXPECT(strstr(t, terms) != NULL, "the avx512 record's key names %s", terms);
    if (strstr(t, "amxq=1") && NMLX_AMX_QUANT_DEFAULT_TERMS != 3) /* untimed: the fixed pick */
        EXPECT(v[7] == NMLX_AMX_QUANT_DEFAULT_TERMS &&
                   v[8] == (NMLX_AMX_QUANT_BF16_MIN_T > 24 ? NMLX_AMX_QUANT_BF16_MIN_T : 24),
               "untimed AMX default stored as %d terms from T=%d", v[7], v[8]);
    char text[2048];
    *vals = 0;
    /* ...and, where the AMX-INT8 prefill is not available, one that asks for it */
    snprintf(text, sizeof text, "%svalues: %d %d %d %d %d %d %d %d %d %d %d\n", t, v[0] ^ 1, v[1],
             v[2], v[3], v[4], v[5], has_amx ? v[6] : 1, has_amx ? 2 : v[7], v[8],
             has_amx8 ? v[9] : 1, v[10]);
    write_text(rec, text);
    free(t);
    /* the child measures over it and stores what it measured */
    int got = in_child(dir, NULL, avx512_bits);
    t = read_text(rec);
    vals = t ? strstr(t, "values:") : NULL;
    int w[11] = {0};
    bool ok = vals && sscanf(vals, "values: %d %d %d %d %d %d %d %d %d %d %d", &w[0], &w[1], &w[2],
                             &w[3], &w[4], &w[5], &w[6], &w[7], &w[8], &w[9], &w[10]) == 11;
    int bits = 0;
    for (int i = 0; ok && i < 6; i++)
        bits |= w[i] << i;
    EXPECT(ok && got == bits && (has_amx ? w[7] != 2 : w[6] == 0) && (has_amx8 || w[9] == 0),
           "a record asking for what the CPU lacks is measured over and replaced (%d, record %d)",
           got, bits);
    free(t);
}

int main(void) {
    snprintf(root, sizeof root, "/tmp/nmlx-pick-XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    char *home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;
    test_round_trip();
    test_malformed();
    test_off_and_unwritable();
    test_directory_choice();
    if (home) setenv("HOME", home, 1);
    free(home);
    unsetenv("NMLX_QUANT_PICK_LOG");
    unsetenv("NMLX_QUANT_INT16");
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        test_pick("avx2", avx2_bit, 1);
    else
        printf("avx2 pick: SKIPPED (no AVX2+FMA)\n");
    if (__builtin_cpu_supports("avx512bf16") && nmlx_qint8_cpu_ok()) {
        test_pick("avx512", avx512_bits, 6);
        test_foreign_isa();
    } else {
        printf("avx512 pick: SKIPPED (no AVX512_BF16 and VNNI)\n");
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
    return test_summary();
}
