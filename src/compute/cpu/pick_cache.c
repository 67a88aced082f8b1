/* Per-machine cache of the CPU kernel picks (see pick_cache.h). */
#define _POSIX_C_SOURCE 200809L
#include "compute/cpu/pick_cache.h"

#include "nmlx.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { PICK_FORMAT = 1, KEY_MAX = 1024, PATH_MAX_LEN = 4096 };

static const char MAGIC[] = "nmlx cpu kernel pick";

/* The cache directory, or false where the cache is off or none is known. */
static bool cache_dir(char *out, size_t cap) {
    const char *off = getenv("NMLX_PICK_CACHE");
    if (off && !strcmp(off, "0")) return false;
    const char *d = getenv("NMLX_CACHE_DIR");
    int n;
    if (d && *d)
        n = snprintf(out, cap, "%s", d);
    else if ((d = getenv("XDG_CACHE_HOME")) && *d == '/')
        n = snprintf(out, cap, "%s/nmlx", d);
    else if ((d = getenv("HOME")) && *d == '/')
        n = snprintf(out, cap, "%s/.cache/nmlx", d);
    else
        return false;
    return n > 0 && (size_t)n < cap;
}

/* The value of the first "name : value" line of /proc/cpuinfo, trimmed. */
static void cpuinfo_field(const char *text, const char *name, char *out, size_t cap) {
    out[0] = 0;
    size_t len = strlen(name);
    for (const char *line = text; line && *line;
         line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
        if (strncmp(line, name, len) != 0) continue;
        const char *p = line + len;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p != ':') continue;
        p++;
        while (*p == ' ')
            p++;
        size_t n = strcspn(p, "\n");
        if (n >= cap) n = cap - 1;
        memcpy(out, p, n);
        out[n] = 0;
        return;
    }
}

/* What identifies this machine and build: a record from another one is ignored. */
static bool machine_key(const char *features, char *key, size_t cap) {
    char text[8192];
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return false;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    char vendor[64], family[16], model[16], stepping[16], name[128];
    cpuinfo_field(text, "vendor_id", vendor, sizeof vendor);
    cpuinfo_field(text, "cpu family", family, sizeof family);
    cpuinfo_field(text, "model", model, sizeof model);
    cpuinfo_field(text, "stepping", stepping, sizeof stepping);
    cpuinfo_field(text, "model name", name, sizeof name);
    int k = snprintf(key, cap, "nmlx %s format %d|%s|%s|%s|%s|%s|%s", NMLX_VERSION_STRING,
                     PICK_FORMAT, vendor, family, model, stepping, name, features ? features : "");
    return k > 0 && (size_t)k < cap && !strchr(key, '\n');
}

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static bool record_path(const char *what, const char *key, char *out, size_t cap) {
    char dir[PATH_MAX_LEN];
    if (!what || !*what || strchr(what, '/') || !cache_dir(dir, sizeof dir)) return false;
    int n = snprintf(out, cap, "%s/cpu-pick-%s-%016" PRIx64 ".txt", dir, what, fnv1a(key));
    return n > 0 && (size_t)n < cap;
}

bool nmlx_pick_cache_path(const char *what, const char *features, char *out, size_t cap) {
    char key[KEY_MAX];
    return machine_key(features, key, sizeof key) && record_path(what, key, out, cap);
}

bool nmlx_pick_cache_load(const char *what, const char *features, int *vals, int n) {
    char key[KEY_MAX], path[PATH_MAX_LEN];
    if (n <= 0 || n > NMLX_PICK_CACHE_MAX || !machine_key(features, key, sizeof key) ||
        !record_path(what, key, path, sizeof path))
        return false;
    FILE *f = fopen(path, "r");
    if (!f) return false;
    char text[KEY_MAX + 512];
    size_t len = fread(text, 1, sizeof text - 1, f);
    bool whole = feof(f) && !ferror(f);
    fclose(f);
    if (!whole) return false; /* longer than any record: not ours */
    text[len] = 0;
    /* line 1: magic; line 2: "key: <key>"; line 3: "values: v0 .. vn-1" */
    char *l1 = text, *l2 = strchr(l1, '\n');
    if (!l2) return false;
    *l2++ = 0;
    char *l3 = strchr(l2, '\n');
    if (!l3) return false;
    *l3++ = 0;
    if (strcmp(l1, MAGIC) != 0 || strncmp(l2, "key: ", 5) != 0 || strcmp(l2 + 5, key) != 0 ||
        strncmp(l3, "values:", 7) != 0)
        return false;
    int got[NMLX_PICK_CACHE_MAX];
    const char *p = l3 + 7;
    for (int i = 0; i < n; i++) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < -1000000 || v > 1000000 ||
            (*end && *end != ' ' && *end != '\n'))
            return false;
        got[i] = (int)v;
        p = end;
    }
    while (*p == ' ')
        p++;
    if (*p == '\n') p++;
    if (*p) return false; /* more values, or trailing text: another layout */
    memcpy(vals, got, (size_t)n * sizeof *vals);
    return true;
}

/* mkdir -p for the cache directory (the last component included). */
static bool make_dirs(const char *dir) {
    char p[PATH_MAX_LEN];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof p) return false;
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != 0) continue;
        char c = p[i];
        p[i] = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) return false;
        p[i] = c;
    }
    struct stat st;
    return stat(dir, &st) == 0 && S_ISDIR(st.st_mode);
}

void nmlx_pick_cache_store(const char *what, const char *features, const int *vals, int n) {
    char key[KEY_MAX], path[PATH_MAX_LEN], dir[PATH_MAX_LEN], tmp[PATH_MAX_LEN + 32];
    if (n <= 0 || n > NMLX_PICK_CACHE_MAX || !machine_key(features, key, sizeof key) ||
        !record_path(what, key, path, sizeof path) || !cache_dir(dir, sizeof dir) ||
        !make_dirs(dir))
        return;
    int k = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (k <= 0 || (size_t)k >= sizeof tmp) return;
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    bool ok = fprintf(f, "%s\nkey: %s\nvalues:", MAGIC, key) > 0;
    for (int i = 0; i < n && ok; i++)
        ok = fprintf(f, " %d", vals[i]) > 0;
    ok = ok && fputc('\n', f) != EOF;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) unlink(tmp); /* another process's record stays */
}
