/* The built-in demo model: the folder `nmlx run` uses when no -m is given.
 * $NMLX_DEMO_MODEL if set and non-empty, else the folder CMake compiled in
 * (NMLX_DEMO_MODEL_DIR: <source>/models/demo in a repository build, the
 * package's models/demo in the npm package's build). */
#include "args.h"

#include <stdlib.h>
#include <sys/stat.h>

#ifndef NMLX_DEMO_MODEL_DIR
#define NMLX_DEMO_MODEL_DIR ""
#endif

const char *cli_demo_model(const char *cmd) {
    const char *env = getenv("NMLX_DEMO_MODEL");
    const char *dir = env && *env ? env : NMLX_DEMO_MODEL_DIR;
    if (!*dir) {
        cli_error(cmd, "no model given (-m DIR) and this build has no built-in demo model");
        return NULL;
    }
    char config[4096];
    struct stat sb;
    int n = snprintf(config, sizeof config, "%s/config.json", dir);
    if (n < 0 || (size_t)n >= sizeof config || stat(config, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        cli_error(cmd,
                  "no model given (-m DIR) and the built-in demo model is missing: no "
                  "config.json in '%s'%s",
                  dir,
                  env && *env ? " (from NMLX_DEMO_MODEL)" : " (set NMLX_DEMO_MODEL or pass -m)");
        return NULL;
    }
    fprintf(stderr,
            "nmlx: no model given; using the built-in demo model at %s (pass -m DIR for a "
            "real model)\n",
            dir);
    return dir;
}
