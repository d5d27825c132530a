/* http.h: requests over one curl multi handle, run in named steps. */
#define _POSIX_C_SOURCE 200809L
#include "http.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/rand.h>

#define WAIT_MAX_MS 1000L /* the longest the wait step sleeps without news */
#define MAX_READY 64      /* sockets handed to curl per wake-up (the rest wait for the next) */

double http_monotime(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Uniform in [0, 1) from OpenSSL's generator: only used for retry jitter. */
static double random01(void) {
    uint32_t u = 0;
    if (RAND_bytes((unsigned char *)&u, sizeof u) != 1)
        u = (uint32_t)clock();
    return (double)u / 4294967296.0;
}

/* ---------------------------------------------------------------- a request */

void http_req_reset(http_req *r) {
    free(r->url);
    r->url = NULL;
    curl_slist_free_all(r->hdrs);
    r->hdrs = NULL;
    buf_free(&r->resp);
    free(r->h_etag);
    free(r->h_lastmod);
    free(r->h_id);
    free(r->h_ctype);
    free(r->h_date);
    free(r->errmsg);
    r->h_etag = r->h_lastmod = r->h_id = r->h_ctype = r->h_date = r->errmsg = NULL;
    r->h_len = 0;
    r->has_len = r->too_large = r->oom = 0;
    r->status = 0;
    r->retry_after = 0;
    r->cc = CURLE_OK;
}

int http_add_header(http_req *r, const char *name, const char *value) {
    buf line = {0};
    buf_addstr(&line, name);
    buf_addstr(&line, ": ");
    buf_addstr(&line, value);
    struct curl_slist *n = buf_failed(&line) ? NULL : curl_slist_append(r->hdrs, line.p);
    buf_free(&line);
    if (n == NULL)
        return -1;
    r->hdrs = n;
    return 0;
}

int http_add_line(http_req *r, const char *line) {
    struct curl_slist *n = curl_slist_append(r->hdrs, line);
    if (n == NULL)
        return -1;
    r->hdrs = n;
    return 0;
}

/* ---------------------------------------------------------------- curl callbacks */

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
    http_req *r = ud;
    size_t len = size * n;
    if (r->resp.len + len > HTTP_MAX_REPLY) {
        r->too_large = 1;
        return 0;
    }
    buf_add(&r->resp, p, len);
    if (buf_failed(&r->resp)) {
        r->oom = 1;
        return 0;
    }
    return len;
}

static int set_header(char **slot, const char *v, size_t n) {
    free(*slot);
    *slot = buf_dupn(v, n);
    return *slot == NULL ? -1 : 0;
}

/* Content-Length: noted, and a reply over the limit is refused before it is read. */
static int on_content_length(http_req *r, const char *v, size_t vl) {
    char tmp[32];
    char *e;
    if (vl == 0 || vl >= sizeof tmp)
        return 0;
    memcpy(tmp, v, vl);
    tmp[vl] = '\0';
    long long x = strtoll(tmp, &e, 10);
    if (*e != '\0' || x < 0)
        return 0;
    r->h_len = x;
    r->has_len = 1;
    if (!r->nobody && (unsigned long long)x > HTTP_MAX_REPLY) {
        r->too_large = 1;
        return -1;
    }
    return 0;
}

size_t http_on_header(char *p, size_t size, size_t n, void *ud) {
    http_req *r = ud;
    size_t len = size * n, nl;
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) { /* a new response (after 100, or a retry) */
        free(r->h_etag);
        free(r->h_lastmod);
        free(r->h_id);
        free(r->h_ctype);
        free(r->h_date);
        r->h_etag = r->h_lastmod = r->h_id = r->h_ctype = r->h_date = NULL;
        r->has_len = 0;
        return len;
    }
    const char *colon = memchr(p, ':', len);
    if (colon == NULL)
        return len;
    nl = (size_t)(colon - p);
    const char *v = colon + 1, *end = p + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
        end--;
    size_t vl = (size_t)(end - v);
    int rc = 0;
    if (nl == 4 && strncasecmp(p, "etag", 4) == 0)
        rc = set_header(&r->h_etag, v, vl);
    else if (nl == 13 && strncasecmp(p, "last-modified", 13) == 0)
        rc = set_header(&r->h_lastmod, v, vl);
    else if (r->id_header != NULL && nl == strlen(r->id_header) && strncasecmp(p, r->id_header, nl) == 0)
        rc = set_header(&r->h_id, v, vl);
    else if (nl == 4 && strncasecmp(p, "date", 4) == 0)
        rc = set_header(&r->h_date, v, vl);
    else if (nl == 12 && strncasecmp(p, "content-type", 12) == 0)
        rc = set_header(&r->h_ctype, v, vl);
    else if (nl == 14 && strncasecmp(p, "content-length", 14) == 0 && on_content_length(r, v, vl) != 0)
        return 0;
    if (rc != 0) {
        r->oom = 1;
        return 0;
    }
    return len;
}

/* CURLMOPT_SOCKETFUNCTION: keep c->pfds in step with the sockets curl waits on. */
static int on_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *sockp) {
    (void)e;
    (void)sockp;
    http_client *c = userp;
    size_t i = 0;
    while (i < c->npfds && c->pfds[i].fd != fd)
        i++;
    if (what == CURL_POLL_REMOVE) {
        if (i < c->npfds)
            c->pfds[i] = c->pfds[--c->npfds];
        return 0;
    }
    if (i == c->npfds) {
        if (c->npfds == c->cappfds) {
            size_t cap = c->cappfds > 0 ? c->cappfds * 2 : 64;
            struct pollfd *p = realloc(c->pfds, cap * sizeof *p);
            if (p == NULL) {
                c->sock_oom = 1; /* the batch gives up: this socket would never be watched */
                return 0;
            }
            c->pfds = p;
            c->cappfds = cap;
        }
        c->pfds[c->npfds++].fd = fd;
    }
    c->pfds[i].events =
        (short)((what & CURL_POLL_IN ? POLLIN : 0) | (what & CURL_POLL_OUT ? POLLOUT : 0));
    c->pfds[i].revents = 0;
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: when curl wants CURL_SOCKET_TIMEOUT (ms < 0: never). */
static int on_timer(CURLM *m, long ms, void *userp) {
    (void)m;
    http_client *c = userp;
    c->timer_at = ms < 0 ? -1.0 : http_monotime() + (double)ms / 1000.0;
    return 0;
}

/* ---------------------------------------------------------------- client */

int http_client_init(http_client *c) {
    c->timer_at = -1.0;
    if ((c->multi = curl_multi_init()) == NULL)
        return -1;
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, (long)HTTP_MAX_CONCURRENCY);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, (void *)c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, (void *)c);
    return 0;
}

void http_client_free(http_client *c) {
    while (c->nidle > 0)
        curl_easy_cleanup(c->idle[--c->nidle]);
    if (c->multi != NULL) {
        curl_multi_cleanup(c->multi); /* may still call on_socket: pfds freed after */
        c->multi = NULL;
    }
    free(c->pfds);
    c->pfds = NULL;
    c->npfds = c->cappfds = 0;
    free(c->ca_file);
    c->ca_file = NULL;
}

/* ---------------------------------------------------------------- one attempt */

static void set_method(CURL *easy, const http_req *r) {
    if (r->nobody) {
        curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
    } else if (r->body != NULL) {
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, r->body);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->bodylen);
        if (strcmp(r->method, "POST") != 0)
            curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, r->method);
    } else if (strcmp(r->method, "GET") == 0) {
        curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
    } else {
        curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, r->method);
    }
}

static void configure(http_client *c, http_req *r, CURL *easy, char *errbuf) {
    curl_easy_reset(easy);
    errbuf[0] = '\0';
    curl_easy_setopt(easy, CURLOPT_URL, r->url);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, r->hdrs);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, (void *)r);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, (void *)r);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, http_on_header);
    r->id_header = c->id_header;
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, (void *)r);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_PATH_AS_IS, 1L); /* keys with ./ and ../ are keys */
    curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, c->verify_tls ? 1L : 0L);
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, c->verify_tls ? 2L : 0L);
    if (c->ca_file != NULL)
        curl_easy_setopt(easy, CURLOPT_CAINFO, c->ca_file);
    set_method(easy, r);
}

#define REFUSED (-1)

/* Start the next attempt of r in slot s: the caller's hook says what to send, then curl
 * takes it. HTTP_OK, a failure that ends the batch, or REFUSED: r is DONE, curl refused it. */
static int start_attempt(http_client *c, http_batch *b, int s, http_req *r) {
    http_req_reset(r);
    r->attempts++;
    if (r->attempts == 1)
        r->first_start = http_monotime();
    int rc = b->start(b->ud, r);
    if (rc != HTTP_OK)
        return rc;
    char *errbuf = b->errbufs + (size_t)s * CURL_ERROR_SIZE;
    configure(c, r, b->easy[s], errbuf);
    if (curl_multi_add_handle(c->multi, b->easy[s]) != CURLM_OK) {
        r->cc = CURLE_FAILED_INIT;
        r->errmsg = buf_dupn("curl refused the request", 24);
        r->state = HTTP_DONE;
        return REFUSED;
    }
    r->state = HTTP_RUNNING;
    b->slot_req[s] = r;
    b->running++;
    return HTTP_OK;
}

static int transport_retryable(CURLcode cc) {
    switch (cc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM: return 1;
    default: return 0;
    }
}

/* An HTTP status the transport retries: 5xx, 429. */
static int status_retryable(long status) {
    return status >= 500 || status == 429;
}

/* Seconds before the next attempt: exponential backoff from retry_base_seconds (at most 10 s)
 * with equal jitter, but never less than what a 503 or 429 asked for (Retry-After). */
static double retry_delay(const http_client *c, const http_req *r) {
    double d = c->retry_base_seconds * (double)(1u << (r->attempts - 1 < 16 ? r->attempts - 1 : 16));
    if (d > 10.0)
        d = 10.0;
    d = d / 2 + random01() * d / 2; /* equal jitter: spread, but never hammer */
    if ((r->status == 503 || r->status == 429) && r->retry_after > d)
        d = r->retry_after + random01() * c->retry_base_seconds; /* honoured, a little spread */
    return d;
}

/* After an attempt ended: DONE, or WAITING for a retry with backoff and jitter. A wait that
 * would end past retry_max_seconds (a Retry-After of minutes) gives up now instead. */
static void finish_attempt(http_client *c, http_req *r, CURLcode cc, const char *errbuf) {
    r->cc = cc;
    r->retryable = cc != CURLE_OK ? (!r->too_large && !r->oom && transport_retryable(cc))
                                  : status_retryable(r->status);
    if (cc != CURLE_OK && errbuf[0] != '\0')
        r->errmsg = buf_dupn(errbuf, strlen(errbuf));
    r->state = HTTP_DONE;
    if (!r->retryable || !r->idempotent || r->attempts >= c->max_attempts)
        return;
    double d = retry_delay(c, r);
    double now = http_monotime();
    if (now + d - r->first_start > c->retry_max_seconds)
        return;
    r->next_at = now + d;
    r->state = HTTP_WAITING;
}

/* ---------------------------------------------------------------- the steps of a batch */

static int mcode(CURLMcode mc) {
    return mc == CURLM_OK ? HTTP_OK : mc == CURLM_OUT_OF_MEMORY ? HTTP_NOMEM : HTTP_CURL;
}

/* One easy handle per slot, from the client's idle ones first. */
static int open_slots(http_client *c, http_batch *b) {
    int conc = b->conc < 1 ? 1 : b->conc > HTTP_MAX_CONCURRENCY ? HTTP_MAX_CONCURRENCY : b->conc;
    if ((size_t)conc > b->n)
        conc = b->n > 0 ? (int)b->n : 1;
    b->easy = calloc((size_t)conc, sizeof *b->easy);
    b->slot_req = calloc((size_t)conc, sizeof *b->slot_req);
    b->errbufs = calloc((size_t)conc, CURL_ERROR_SIZE);
    if (b->easy == NULL || b->slot_req == NULL || b->errbufs == NULL)
        return HTTP_NOMEM;
    b->nslots = conc;
    for (int i = 0; i < conc; i++)
        if ((b->easy[i] = c->nidle > 0 ? c->idle[--c->nidle] : curl_easy_init()) == NULL)
            return HTTP_NOMEM;
    for (size_t i = 0; i < b->n; i++)
        if (b->reqs[i]->state == HTTP_DONE)
            b->done++; /* refused by the caller: never sent */
    return HTTP_OK;
}

/* The request a free slot takes: a due retry first, then the next new one; NULL: none. */
static http_req *next_request(http_batch *b, double now) {
    if (b->waiting > 0) {
        for (size_t i = 0; i < b->n; i++) {
            http_req *r = b->reqs[i];
            if (r->state == HTTP_WAITING && r->next_at <= now) {
                b->waiting--;
                return r;
            }
        }
    }
    while (b->next < b->n) {
        http_req *r = b->reqs[b->next++];
        if (r->state == HTTP_QUEUED)
            return r;
    }
    return NULL;
}

/* The server did not answer another request of this batch through all its attempts: this
 * one would wait out the same timeouts. Fail it unsent, so a dead or frozen server costs
 * one round of timeouts, not one per request. */
static void fail_unsent(http_batch *b, http_req *r) {
    static const char msg[] = "not sent: the server did not answer an earlier request of this call";
    free(r->errmsg);
    r->errmsg = buf_dupn(msg, sizeof msg - 1);
    r->cc = b->down;
    r->retryable = 1;
    r->state = HTTP_DONE;
    b->done++;
}

/* Step 1: give every free slot a request. */
static int fill_slots(http_client *c, http_batch *b) {
    double now = http_monotime();
    for (int s = 0; s < b->nslots; s++) {
        if (b->slot_req[s] != NULL)
            continue;
        http_req *r;
        while ((r = next_request(b, now)) != NULL) {
            if (b->down != CURLE_OK) {
                fail_unsent(b, r);
                continue;
            }
            int rc = start_attempt(c, b, s, r);
            if (rc == HTTP_OK)
                break;
            if (rc != REFUSED)
                return rc;
            b->done++; /* refused by curl: the slot is still free */
        }
        if (r == NULL)
            break; /* nothing left to start */
    }
    return HTTP_OK;
}

/* How long the wait step may sleep: until the next retry is due, when a slot is free. */
static long wait_budget(const http_batch *b) {
    long wait_ms = WAIT_MAX_MS;
    if (b->running >= b->nslots || b->waiting == 0)
        return wait_ms;
    double now = http_monotime();
    for (size_t i = 0; i < b->n; i++) {
        if (b->reqs[i]->state != HTTP_WAITING)
            continue;
        double ms = (b->reqs[i]->next_at - now) * 1000.0;
        if (ms < 0)
            ms = 0;
        if (ms < (double)wait_ms)
            wait_ms = (long)ms;
    }
    return wait_ms;
}

/* Step 2: wait up to wait_ms for the sockets curl watches, then let curl act on the ready
 * ones, and on its timer when due. */
static int wait_and_act(http_client *c, long wait_ms) {
    int still = 0;
    if (c->timer_at >= 0) {
        double ms = (c->timer_at - http_monotime()) * 1000.0;
        if (ms < (double)wait_ms)
            wait_ms = ms <= 0 ? 0 : (long)ms + 1;
    }
    if (poll(c->pfds, (nfds_t)c->npfds, (int)wait_ms) > 0) {
        /* on_socket may reorder c->pfds while curl acts: note the ready ones first */
        curl_socket_t fds[MAX_READY];
        int flags[MAX_READY], k = 0;
        for (size_t i = 0; i < c->npfds && k < MAX_READY; i++) {
            short re = c->pfds[i].revents;
            if (re == 0)
                continue;
            fds[k] = c->pfds[i].fd;
            flags[k++] = (re & (POLLIN | POLLHUP) ? CURL_CSELECT_IN : 0) |
                         (re & POLLOUT ? CURL_CSELECT_OUT : 0) |
                         (re & (POLLERR | POLLNVAL) ? CURL_CSELECT_ERR : 0);
            c->pfds[i].revents = 0;
        }
        for (int j = 0; j < k; j++) {
            int rc = mcode(curl_multi_socket_action(c->multi, fds[j], flags[j], &still));
            if (rc != HTTP_OK)
                return rc;
        }
    }
    if (c->timer_at >= 0 && http_monotime() >= c->timer_at) {
        c->timer_at = -1.0;
        int rc = mcode(curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &still));
        if (rc != HTTP_OK)
            return rc;
    }
    return c->sock_oom ? HTTP_NOMEM : HTTP_OK;
}

/* Step 3: every finished transfer frees its slot; its request is DONE or waits for a retry. */
static void harvest(http_client *c, http_batch *b) {
    int q = 0;
    CURLMsg *m;
    while ((m = curl_multi_info_read(c->multi, &q)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *e = m->easy_handle;
        CURLcode cc = m->data.result;
        int s = 0;
        while (s < b->nslots && b->easy[s] != e)
            s++;
        if (s == b->nslots)
            continue; /* not ours: cannot happen */
        http_req *r = b->slot_req[s];
        long nconn = 0;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
        curl_off_t after = 0; /* Retry-After, seconds or an HTTP date, as curl read it */
        if (curl_easy_getinfo(e, CURLINFO_RETRY_AFTER, &after) == CURLE_OK && after > 0)
            r->retry_after = (double)after;
        if (curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &nconn) == CURLE_OK)
            c->n_connects += nconn;
        c->n_requests++;
        curl_multi_remove_handle(c->multi, e);
        b->slot_req[s] = NULL;
        b->running--;
        finish_attempt(c, r, cc, b->errbufs + (size_t)s * CURL_ERROR_SIZE);
        if (r->state == HTTP_WAITING) {
            b->waiting++;
            c->n_retries++;
        } else {
            b->done++;
            if (cc != CURLE_OK && r->retryable)
                b->down = cc; /* unreachable, timed out or cut off, after its retries */
        }
    }
}

/* Step 4: detach what still runs (a batch that could not finish) and give the easy handles
 * back to the client for its next call. */
static void release_slots(http_client *c, http_batch *b) {
    for (int s = 0; s < b->nslots; s++) {
        if (b->slot_req[s] != NULL) {
            curl_multi_remove_handle(c->multi, b->easy[s]);
            b->slot_req[s]->state = HTTP_DONE;
            b->slot_req[s] = NULL;
        }
        if (b->easy[s] != NULL && c->nidle < HTTP_MAX_CONCURRENCY) {
            curl_easy_reset(b->easy[s]); /* drop pointers into this batch (headers, error buffer) */
            c->idle[c->nidle++] = b->easy[s];
            b->easy[s] = NULL;
        }
    }
}

int http_begin(http_client *c, http_batch *b) {
    int rc = open_slots(c, b);
    return rc == HTTP_OK ? http_step(c, b, 0) : rc;
}

int http_step(http_client *c, http_batch *b, long max_wait_ms) {
    if (b->done >= b->n)
        return HTTP_OK;
    int rc = fill_slots(c, b);
    if (rc != HTTP_OK || b->done >= b->n)
        return rc;
    long wait_ms = wait_budget(b);
    if (max_wait_ms >= 0 && max_wait_ms < wait_ms)
        wait_ms = max_wait_ms;
    rc = wait_and_act(c, wait_ms);
    if (rc == HTTP_OK)
        harvest(c, b);
    return rc;
}

int http_finished(const http_batch *b) {
    return b->done >= b->n;
}

void http_end(http_client *c, http_batch *b) {
    if (b->easy != NULL && b->slot_req != NULL)
        release_slots(c, b);
}

int http_run(http_client *c, http_batch *b) {
    int rc = http_begin(c, b);
    while (rc == HTTP_OK && !http_finished(b))
        rc = http_step(c, b, -1);
    http_end(c, b);
    return rc;
}

void http_batch_free(http_batch *b) {
    if (b->easy != NULL) {
        for (int i = 0; i < b->nslots; i++)
            if (b->easy[i] != NULL)
                curl_easy_cleanup(b->easy[i]);
        free(b->easy);
        b->easy = NULL;
    }
    free(b->slot_req);
    free(b->errbufs);
    b->slot_req = NULL;
    b->errbufs = NULL;
    b->nslots = 0;
}

/* ---------------------------------------------------------------- outcome */

int http_ok(const http_req *r) {
    return r->cc == CURLE_OK && r->status / 100 == 2;
}

const char *http_error_code(const http_req *r) {
    if (r->too_large)
        return "ReplyTooLarge";
    if (r->oom)
        return "OutOfMemory";
    switch (r->cc) {
    case CURLE_OPERATION_TIMEDOUT: return "timeout";
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM: return "tls";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY: return "dns";
    default: return transport_retryable(r->cc) ? "connection" : "curl";
    }
}

const char *http_error_message(const http_req *r) {
    if (r->too_large)
        return "reply larger than the limit";
    if (r->oom)
        return "not enough memory for the reply";
    return r->errmsg ? r->errmsg : curl_easy_strerror(r->cc);
}
