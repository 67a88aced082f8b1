/* NMLX_CRASH_TRACE=1: a fatal signal in the process (SIGSEGV, SIGBUS,
 * SIGFPE, SIGILL, SIGABRT) writes its number and a backtrace to stderr
 * before the process dies as it would have. Off by default: a server that
 * vanished under load says where. Frames inside nmlx.node print as
 * "nmlx.node(+0xOFFSET)": `addr2line -f -e nmlx.node 0xOFFSET` names them. */
#define _GNU_SOURCE
#include "addon.h"

#include <execinfo.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void on_fatal(int sig) {
    static const char head[] = "\nnmlx: fatal signal ";
    char num[16];
    int n = 0;
    for (int v = sig; v > 0 && n < 15; v /= 10)
        num[n++] = (char)('0' + v % 10);
    ssize_t w = write(2, head, sizeof head - 1);
    while (n > 0)
        w = write(2, &num[--n], 1);
    w = write(2, ", backtrace:\n", 13);
    (void)w;
    void *frames[64];
    int k = backtrace(frames, 64);
    backtrace_symbols_fd(frames, k, 2);
    /* SA_RESETHAND restored the default action: die of the same signal */
    raise(sig);
}

void nmlx_addon_crash_trace_install(void) {
    const char *e = getenv("NMLX_CRASH_TRACE");
    if (!e || !*e || !strcmp(e, "0")) return;
    void *warm[1];
    backtrace(warm, 1); /* loads libgcc's unwinder now, not inside the handler */
    static const int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fatal;
    sa.sa_flags = (int)(SA_RESETHAND | SA_NODEFER);
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
        sigaction(sigs[i], &sa, NULL);
}
