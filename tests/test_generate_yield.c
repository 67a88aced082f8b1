/* A long nmlx_generate on a backend with a call lock (a GPU; here the
 * emulated device of device_emu.h, which takes the lock as CUDA does) lets
 * another thread in between tokens. Without that, a Node app's JS thread
 * that creates or frees a session while a generation runs on the GPU would
 * wait for the whole generation, its event loop frozen.
 *
 * Thread A generates 24 greedy tokens. At its second token its callback
 * tells the main thread to go; from then on each callback waits up to 0.2 s
 * for the main thread to have created a session, evaluated 3 ids on it,
 * sampled and freed it. Checks: the main thread got through while A was
 * still generating, its calls succeeded, and A's ids
 * equal the same prompt generated alone (the session's logits were moved
 * to the host before the lock was let go, and are right after). */
#define _GNU_SOURCE
#include "device_emu.h"
#include "harness.h"
#include "model_util.h"
#include "nmlx.h"

#include <errno.h>
#include <pthread.h>
#include <time.h>

enum { NEW = 24 };

typedef struct gen_ctx {
    nmlx_session *s;
    const int32_t *prompt;
    size_t n_prompt;
    int32_t ids[NEW];
    size_t n;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool go, done;
    int done_at; /* the token at which A saw the main thread done (-1: never) */
    int waits;   /* callbacks that waited 0.2 s in vain */
    nmlx_status st;
} gen_ctx;

static int on_token(void *user, int32_t id, const char *text, size_t len) {
    (void)text, (void)len;
    gen_ctx *g = user;
    if (g->n < NEW) g->ids[g->n] = id;
    g->n++;
    pthread_mutex_lock(&g->mu);
    if (g->n == 2) {
        g->go = true;
        pthread_cond_broadcast(&g->cv);
    } else if (g->n > 2 && !g->done) {
        /* give the main thread a moment: if this generate let it in, it
         * finishes its calls now; if it was not yet waiting when the
         * generation looked (a slow wake-up, say under ASan), the next
         * token lets it in. Without the yield it never gets in. */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 200 * 1000 * 1000;
        if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
        while (!g->done)
            if (pthread_cond_timedwait(&g->cv, &g->mu, &until) == ETIMEDOUT) {
                g->waits++;
                break;
            }
    }
    if (g->done && g->done_at < 0) g->done_at = (int)g->n;
    pthread_mutex_unlock(&g->mu);
    return 0;
}

static void *generator(void *arg) {
    gen_ctx *g = arg;
    nmlx_generate_params gp = test_greedy_params(NEW, on_token, g);
    g->st = nmlx_generate(g->s, g->prompt, g->n_prompt, &gp, NULL);
    return NULL;
}

static void check(nmlx_backend *emu, const char *fixture) {
    nmlx_model *m = test_load_fixture(fixture, NULL, emu);
    if (!m) return;
    const int32_t prompt[] = {5, 17, 3, 42, 9, 11};
    const size_t np = sizeof prompt / sizeof prompt[0];
    int32_t ref[NEW];
    size_t got = 0;
    nmlx_session *s = NULL;
    EXPECT(nmlx_session_create(m, NULL, &s) == NMLX_OK &&
               test_greedy_ids(s, prompt, np, ref, NEW, &got, NULL) == NMLX_OK && got == NEW,
           "%s: alone: %s", fixture, nmlx_last_error());
    nmlx_session_free(s);

    gen_ctx g = {.prompt = prompt, .n_prompt = np, .done_at = -1};
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    EXPECT(nmlx_session_create(m, NULL, &g.s) == NMLX_OK, "%s: session", fixture);
    pthread_t th;
    if (!g.s || pthread_create(&th, NULL, generator, &g) != 0) {
        EXPECT(0, "%s: start the generating thread", fixture);
        nmlx_session_free(g.s);
        nmlx_model_free(m);
        return;
    }
    pthread_mutex_lock(&g.mu);
    while (!g.go)
        pthread_cond_wait(&g.cv, &g.mu);
    pthread_mutex_unlock(&g.mu);
    /* A is generating: a session of our own, its eval, sample and free */
    nmlx_session *other = NULL;
    const int32_t ids[] = {7, 8, 9};
    int32_t id = -1;
    nmlx_status st = nmlx_session_create(m, NULL, &other);
    if (st == NMLX_OK) st = nmlx_session_eval(other, ids, 3, 0);
    if (st == NMLX_OK) st = nmlx_session_sample(other, NULL, &id);
    nmlx_session_free(other);
    EXPECT(st == NMLX_OK && id >= 0 && id < nmlx_model_vocab_size(m),
           "%s: calls while another thread generates: %s", fixture, nmlx_last_error());
    pthread_mutex_lock(&g.mu);
    g.done = true;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);
    pthread_join(th, NULL);

    EXPECT(g.st == NMLX_OK && g.n == NEW, "%s: generate: %d tokens, %s", fixture, (int)g.n,
           nmlx_last_error());
    EXPECT(g.done_at > 2 && g.done_at <= NEW,
           "%s: the other thread got in while the generation ran (done at token %d; %d waits of "
           "0.2 s in vain)",
           fixture, g.done_at, g.waits);
    int differ = 0;
    for (int i = 0; i < NEW; i++)
        differ += g.ids[i] != ref[i];
    EXPECT(differ == 0, "%s: %d of %d ids unlike the lone run's", fixture, differ, NEW);
    printf("%-24s the other thread got in at token %d of %d; ids equal alone: %s\n", fixture,
           g.done_at, NEW, differ ? "NO" : "yes");
    nmlx_session_free(g.s);
    pthread_mutex_destroy(&g.mu);
    pthread_cond_destroy(&g.cv);
    nmlx_model_free(m);
}

int main(void) {
    nmlx_backend *cpu = NULL, *emu = NULL;
    if (nmlx_backend_cpu_create(1, &cpu) != NMLX_OK || emu_create(cpu, &emu) != NMLX_OK) {
        EXPECT(0, "backends");
        return test_summary();
    }
    EXPECT(emu->call_lock != NULL, "the emulated device takes a call lock");
    check(emu, "qwen3");
    check(emu, "quant_llama_q4g64_f16");
    EXPECT(emu_violations(emu) == 0, "%ld device-memory violations, first: %s", emu_violations(emu),
           emu_first_violation(emu));
    emu_free(emu);
    nmlx_backend_free(cpu);
    return test_summary();
}
