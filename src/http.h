/*
 * HTTP/1.1 requests over libcurl's multi interface: one connection pool per client, a
 * batch of requests run to completion with bounded concurrency, retries with backoff and
 * jitter for idempotent requests (5xx, 429, connection failures; at least as long as a
 * 503's or 429's Retry-After asks), a fast failure when the server stops answering. No Lua
 * and no S3: what to send for each attempt (URL, headers, signature) comes from the caller's
 * start hook; spec/fuzz links this file alone.
 *
 * The loop (http_run) is curl's docs/examples/multi-event.c in named steps: fill the free
 * slots, wait on the sockets curl watches (or its timer), harvest finished transfers,
 * release the slots. No easy handle is left attached to the multi handle when it returns,
 * so a caller may raise right after (its memory freed by its own __gc).
 */
#ifndef RESCLEAN_HTTP_H
#define RESCLEAN_HTTP_H
#include <poll.h>
#include <stddef.h>

#include <curl/curl.h>

#include "buf.h"

#define HTTP_MAX_CONCURRENCY 256
#define HTTP_MAX_REPLY ((size_t)32 << 20) /* larger replies are an error, not a crash */

enum http_state { HTTP_QUEUED, HTTP_RUNNING, HTTP_WAITING, HTTP_DONE };

typedef struct http_req {
    /* what to send, set by the caller */
    const char *method;
    const char *body; /* NULL: none (not owned) */
    size_t bodylen;
    int nobody, idempotent; /* HEAD; may be retried */
    /* the last attempt: url and hdrs are set by the start hook (http_add_header) */
    char *url;
    struct curl_slist *hdrs;
    buf resp;
    const char *id_header; /* the client's id_header, for the header callback */
    char *h_etag, *h_lastmod, *h_id, *h_ctype, *h_date; /* h_id: the id_header's value */
    long long h_len;
    int has_len, too_large, oom;
    long status;
    double retry_after; /* seconds a 503 or 429 asked to wait (Retry-After); 0: none */
    CURLcode cc;
    char *errmsg;
    /* the request over all its attempts */
    int attempts, retryable;
    enum http_state state; /* DONE before the batch: refused by the caller, never sent */
    double first_start, next_at;
} http_req;

/* The connection pool and what every request of the client shares. */
typedef struct http_client {
    CURLM *multi;
    CURL *idle[HTTP_MAX_CONCURRENCY]; /* easy handles kept between calls (buffers, no re-init) */
    int nidle;
    /* The sockets curl asks us to watch (CURLMOPT_SOCKETFUNCTION) and when it wants to be
     * called back (CURLMOPT_TIMERFUNCTION): the wait step polls exactly these and hands
     * curl only the ready ones, so curl neither polls every transfer's socket itself nor
     * walks every transfer on each wake-up. */
    struct pollfd *pfds;
    size_t npfds, cappfds;
    int sock_oom;    /* a socket could not be recorded: the batch gives up (out of memory) */
    double timer_at; /* monotonic time at which curl wants CURL_SOCKET_TIMEOUT; < 0: none */
    /* settings */
    int verify_tls, max_attempts;
    long connect_timeout_ms, timeout_ms;
    double retry_max_seconds, retry_base_seconds;
    char *ca_file;         /* owned; NULL: curl's default */
    const char *id_header; /* a reply header each request keeps in h_id (not owned); NULL: none */
    /* counters: attempts sent, of which retries, connections opened for them */
    long long n_requests, n_retries, n_connects;
} http_client;

/* Results of a start hook, and of http_run. */
enum { HTTP_OK, HTTP_HOOK_ERROR, HTTP_NOMEM, HTTP_CURL };

/* Called before each attempt of r is sent (r's previous attempt already cleared): set
 * r->url and r->hdrs. HTTP_OK, HTTP_NOMEM, or HTTP_HOOK_ERROR (the hook's own failure, e.g.
 * a trace function that raised: the batch stops and http_run returns it). */
typedef int (*http_start_fn)(void *ud, http_req *r);

typedef struct http_batch {
    http_req **reqs; /* not owned */
    size_t n;
    int conc; /* at most this many at once */
    http_start_fn start;
    void *ud;
    /* private to http_run: the slots and where the batch stands */
    CURL **easy;
    http_req **slot_req;
    char *errbufs;
    int nslots, running;
    size_t next, done, waiting;
    CURLcode down; /* a request gave up on the server: send no more (fail fast) */
} http_batch;

/* c zeroed by the caller, its settings filled before or after. 0, or -1 when curl cannot
 * make a multi handle. */
int http_client_init(http_client *c);
void http_client_free(http_client *c); /* idempotent */

/* Run every request of b to completion. HTTP_OK, or HTTP_HOOK_ERROR / HTTP_NOMEM /
 * HTTP_CURL when it could not finish (requests left are DONE, unanswered). */
int http_run(http_client *c, http_batch *b);
void http_batch_free(http_batch *b); /* its slots; idempotent */

/* http_run in steps, for a caller that does other work while the requests are in flight
 * (the server works on them meanwhile; answers wait in the socket until the next step):
 * http_begin starts what the slots take, each http_step moves the batch on, waiting up to
 * max_wait_ms (-1: as long as the batch needs), http_end detaches what still runs. Return
 * codes as http_run's; after an error, only http_end. */
int http_begin(http_client *c, http_batch *b);
int http_step(http_client *c, http_batch *b, long max_wait_ms);
int http_finished(const http_batch *b);
void http_end(http_client *c, http_batch *b); /* idempotent */

/* Append "name: value" (or a raw line: "Expect:" removes a header curl would add) to
 * r->hdrs. 0, or -1 out of memory. */
int http_add_header(http_req *r, const char *name, const char *value);
int http_add_line(http_req *r, const char *line);
void http_req_reset(http_req *r); /* forget the last attempt (frees it) */

/* An answer with a 2xx status. */
int http_ok(const http_req *r);
/* A request that got no usable answer (r->cc != CURLE_OK): its error code ("connection",
 * "timeout", "tls", "dns", "curl" for any other curl failure, "ReplyTooLarge",
 * "OutOfMemory") and a one-line message. */
const char *http_error_code(const http_req *r);
const char *http_error_message(const http_req *r);

/* curl's CURLOPT_HEADERFUNCTION for a request (exported for spec/fuzz). */
size_t http_on_header(char *p, size_t size, size_t n, void *ud);

double http_monotime(void);

#endif
