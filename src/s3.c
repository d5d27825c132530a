/*
 * resclean.s3: signed S3 calls (MinIO, AWS, Ceph RGW) with libcurl and expat.
 *
 * Every request of a client goes through the client's one curl multi handle, so all
 * calls share one connection pool: single calls reuse the connections that head_many
 * opened and the other way round. Requests are signed (sigv4.c) for each attempt.
 *
 * Memory: the requests of one call live in a "batch" userdata whose __gc frees them,
 * and no easy handle stays attached to the multi handle when a call returns, so an
 * error raised at any point (out of memory, a failing trace hook) leaks nothing.
 * Misuse raises; the world failing returns nil, {kind="s3", ...}.
 */
#define _POSIX_C_SOURCE 200809L
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <expat.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <lauxlib.h>
#include <lua.h>

#include "resclean.h"
#include "sigv4.h"

#define CLIENT_MT "resclean.s3.client"
#define BATCH_MT "resclean.s3.batch"
#define RESULT_MT "resclean.s3.sigv4_result"
#define MAX_REPLY ((size_t)32 << 20) /* larger replies are an error, not a crash */
#define MAX_DELETE_KEYS 1000         /* S3's limit per DeleteObjects */
#define MAX_CONCURRENCY 256
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define S3_XMLNS "http://s3.amazonaws.com/doc/2006-03-01/"
#define REDACTED "<redacted>"

/* ---------------------------------------------------------------- buffers */

typedef struct buf {
    char *p;
    size_t n, cap;
} buf;

/* Append n bytes, keep the buffer NUL-terminated. 0 ok, -1 out of memory. */
static int buf_add(buf *b, const void *s, size_t n) {
    if (b->cap - b->n <= n) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->n <= n) {
            if (cap > SIZE_MAX / 2)
                return -1;
            cap *= 2;
        }
        char *p = realloc(b->p, cap);
        if (p == NULL)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    if (n > 0)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

static int buf_str(buf *b, const char *s) {
    return buf_add(b, s, strlen(s));
}

static void buf_free(buf *b) {
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

static char *dupn(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p != NULL) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static void free_secret(char **p) {
    if (*p != NULL) {
        OPENSSL_cleanse(*p, strlen(*p));
        free(*p);
        *p = NULL;
    }
}

static double monotime(void) {
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

/* ---------------------------------------------------------------- client */

typedef struct s3_client {
    int closed, busy;
    int https, path_style, verify_tls, max_attempts, concurrency;
    long connect_timeout_ms, timeout_ms;
    double retry_max_seconds, retry_base_seconds;
    lua_Integer n_requests, n_retries, n_connects; /* for stats() */
    char *authority; /* host[:port] as sent in Host, default port dropped */
    char *region, *access_key, *secret_key, *session_token, *bucket, *ca_file;
    CURLM *multi;
    CURL *idle[MAX_CONCURRENCY]; /* easy handles kept between calls (buffers, no re-init) */
    int nidle;
    /* The sockets curl asks us to watch (CURLMOPT_SOCKETFUNCTION) and when it wants to
     * be called back (CURLMOPT_TIMERFUNCTION): drive() waits on exactly these and hands
     * curl only the sockets that are ready, so curl neither polls every transfer's
     * socket itself nor walks every transfer on each wake-up. */
    struct pollfd *pfds;
    size_t npfds, cappfds;
    int sock_oom;     /* a socket could not be recorded: drive() gives up (out of memory) */
    double timer_at;  /* monotime at which curl wants CURL_SOCKET_TIMEOUT; < 0: none */
    sigv4_key_cache key_cache; /* derived from secret_key: wiped with it */
} s3_client;

static void client_release(s3_client *c) {
    while (c->nidle > 0)
        curl_easy_cleanup(c->idle[--c->nidle]);
    if (c->multi != NULL) {
        curl_multi_cleanup(c->multi); /* may still call on_socket: pfds freed after */
        c->multi = NULL;
    }
    free(c->pfds);
    c->pfds = NULL;
    c->npfds = c->cappfds = 0;
    free(c->authority);
    free(c->region);
    free(c->access_key);
    free(c->bucket);
    free(c->ca_file);
    free_secret(&c->secret_key);
    free_secret(&c->session_token);
    OPENSSL_cleanse(&c->key_cache, sizeof c->key_cache);
    c->authority = c->region = c->access_key = c->bucket = c->ca_file = NULL;
    c->closed = 1;
}

static s3_client *check_client(lua_State *L) {
    s3_client *c = luaL_checkudata(L, 1, CLIENT_MT);
    if (c->closed)
        luaL_error(L, "attempt to use a closed s3 client");
    if (c->busy)
        luaL_error(L, "s3 client is busy (called from its own trace hook?)");
    return c;
}

/* __gc, __close and close(): idempotent. */
static int client_close(lua_State *L) {
    s3_client *c = luaL_checkudata(L, 1, CLIENT_MT);
    if (c->busy)
        return luaL_error(L, "cannot close an s3 client while it is busy");
    client_release(c);
    return 0;
}

static int client_tostring(lua_State *L) {
    s3_client *c = luaL_checkudata(L, 1, CLIENT_MT);
    if (c->closed)
        lua_pushliteral(L, "resclean.s3.client (closed)");
    else
        lua_pushfstring(L, "resclean.s3.client (%s://%s, bucket %s)", c->https ? "https" : "http",
                        c->authority, c->bucket);
    return 1;
}

/* ---------------------------------------------------------------- requests */

enum { RQ_QUEUED, RQ_RUNNING, RQ_WAITING, RQ_DONE };

typedef struct s3_req {
    /* what to send */
    const char *method;
    const char *key; /* raw key (batch-owned copy or anchored), NULL: the bucket itself */
    size_t keylen;
    sigv4_kv query[6];
    size_t nquery;
    const char *content_type;
    const char *body; /* anchored Lua string or body_owned */
    size_t bodylen;
    char *body_owned;
    char payload_hash[65];
    char content_md5[32]; /* "" when none */
    int nobody, idempotent;
    const char *local_code; /* refused before any request: code of the error */
    /* the last attempt */
    char *url;
    struct curl_slist *hdrs;
    buf resp;
    char *h_etag, *h_lastmod, *h_reqid, *h_ctype;
    long long h_len;
    int has_len, too_large, oom;
    long status;
    CURLcode cc;
    char *errmsg;
    int attempts, state, retryable;
    double first_start, next_at;
    /* delete_many: the keys of a DeleteObjects request, sorted */
    struct bkey **order;
    size_t norder;
} s3_req;

/* A key of delete_many and its outcome. */
typedef struct bkey {
    const char *s;
    size_t len;
    size_t req;
    int state; /* 0 not mentioned, 1 deleted, 2 error */
    char code[64], message[256];
} bkey;

typedef struct list_entry {
    char *key;
    size_t keylen;
    long long size;
    int has_size;
    char *last_modified, *etag;
} list_entry;

typedef struct list_out {
    list_entry *e;
    size_t n, cap;
    char **prefixes;
    size_t *prefixlens;
    size_t np, pcap;
    int truncated, url_encoded, in_contents, in_prefixes;
    char *next_token;
    list_entry cur;
    char *cur_prefix;
    size_t cur_prefixlen;
} list_out;

typedef struct s3_batch {
    s3_req *reqs;
    size_t nreq;
    bkey *keys;
    size_t nkeys;
    char *arena; /* copies of the keys */
    CURL **easy;
    s3_req **slot_req;
    char *errbufs;
    int nslots;
    list_out *list;
} s3_batch;

static void req_reset_attempt(s3_req *r) {
    free(r->url);
    r->url = NULL;
    curl_slist_free_all(r->hdrs);
    r->hdrs = NULL;
    buf_free(&r->resp);
    free(r->h_etag);
    free(r->h_lastmod);
    free(r->h_reqid);
    free(r->h_ctype);
    free(r->errmsg);
    r->h_etag = r->h_lastmod = r->h_reqid = r->h_ctype = r->errmsg = NULL;
    r->h_len = 0;
    r->has_len = r->too_large = r->oom = 0;
    r->status = 0;
    r->cc = CURLE_OK;
}

static void list_entry_free(list_entry *e) {
    free(e->key);
    free(e->last_modified);
    free(e->etag);
    memset(e, 0, sizeof *e);
}

static void list_free(list_out *l) {
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n; i++)
        list_entry_free(&l->e[i]);
    for (size_t i = 0; i < l->np; i++)
        free(l->prefixes[i]);
    list_entry_free(&l->cur);
    free(l->cur_prefix);
    free(l->e);
    free(l->prefixes);
    free(l->prefixlens);
    free(l->next_token);
    free(l);
}

/* Free everything a batch owns; idempotent. Its easy handles are never attached to a
 * multi handle here (drive() detaches them before returning). */
static void batch_release(s3_batch *b) {
    if (b->reqs != NULL) {
        for (size_t i = 0; i < b->nreq; i++) {
            req_reset_attempt(&b->reqs[i]);
            free(b->reqs[i].body_owned);
            free(b->reqs[i].order);
        }
        free(b->reqs);
        b->reqs = NULL;
    }
    if (b->easy != NULL) {
        for (int i = 0; i < b->nslots; i++)
            if (b->easy[i] != NULL)
                curl_easy_cleanup(b->easy[i]);
        free(b->easy);
        b->easy = NULL;
    }
    free(b->slot_req);
    free(b->errbufs);
    free(b->keys);
    free(b->arena);
    list_free(b->list);
    b->slot_req = NULL;
    b->errbufs = NULL;
    b->keys = NULL;
    b->arena = NULL;
    b->list = NULL;
    b->nreq = b->nkeys = 0;
}

static int batch_gc(lua_State *L) {
    batch_release(luaL_checkudata(L, 1, BATCH_MT));
    return 0;
}

/* Push a new batch of nreq requests (zeroed); raises on out of memory (the batch frees). */
static s3_batch *batch_new(lua_State *L, size_t nreq) {
    s3_batch *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    luaL_setmetatable(L, BATCH_MT);
    if (nreq > 0) {
        b->reqs = calloc(nreq, sizeof *b->reqs);
        if (b->reqs == NULL)
            luaL_error(L, "not enough memory");
        b->nreq = nreq;
        for (size_t i = 0; i < nreq; i++) {
            b->reqs[i].idempotent = 1;
            memcpy(b->reqs[i].payload_hash, EMPTY_SHA256, sizeof EMPTY_SHA256);
        }
    }
    return b;
}

/* ---------------------------------------------------------------- curl callbacks */

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
    s3_req *r = ud;
    size_t len = size * n;
    if (r->resp.n + len > MAX_REPLY) {
        r->too_large = 1;
        return 0;
    }
    if (buf_add(&r->resp, p, len) != 0) {
        r->oom = 1;
        return 0;
    }
    return len;
}

static int set_header(char **slot, const char *v, size_t n) {
    free(*slot);
    *slot = dupn(v, n);
    return *slot == NULL ? -1 : 0;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud) {
    s3_req *r = ud;
    size_t len = size * n, nl;
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) { /* a new response (after 100, or a retry) */
        free(r->h_etag);
        free(r->h_lastmod);
        free(r->h_reqid);
        free(r->h_ctype);
        r->h_etag = r->h_lastmod = r->h_reqid = r->h_ctype = NULL;
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
    else if (nl == 16 && strncasecmp(p, "x-amz-request-id", 16) == 0)
        rc = set_header(&r->h_reqid, v, vl);
    else if (nl == 12 && strncasecmp(p, "content-type", 12) == 0)
        rc = set_header(&r->h_ctype, v, vl);
    else if (nl == 14 && strncasecmp(p, "content-length", 14) == 0) {
        char tmp[32];
        char *e;
        if (vl > 0 && vl < sizeof tmp) {
            memcpy(tmp, v, vl);
            tmp[vl] = '\0';
            long long x = strtoll(tmp, &e, 10);
            if (*e == '\0' && x >= 0) {
                r->h_len = x;
                r->has_len = 1;
                if (!r->nobody && (unsigned long long)x > MAX_REPLY) { /* refuse before reading it */
                    r->too_large = 1;
                    return 0;
                }
            }
        }
    }
    if (rc != 0) {
        r->oom = 1;
        return 0;
    }
    return len;
}

/* ---------------------------------------------------------------- sending */

typedef struct trace_args {
    const s3_req *r;
    const sigv4_kv *hdrs;
    size_t nh;
    const char *signed_headers;
} trace_args;

/* Protected: lightuserdata(args) fn. Calls fn(method, url, headers, body, attempt). */
static int trace_call(lua_State *L) {
    const trace_args *t = lua_touserdata(L, 1);
    const s3_req *r = t->r;
    lua_pushvalue(L, 2);
    lua_pushstring(L, r->method);
    lua_pushstring(L, r->url);
    lua_createtable(L, 0, (int)t->nh + 1);
    for (size_t i = 0; i < t->nh; i++) {
        const char *v = t->hdrs[i].value;
        if (strcmp(t->hdrs[i].name, "x-amz-security-token") == 0)
            v = REDACTED;
        lua_pushstring(L, v);
        lua_setfield(L, -2, t->hdrs[i].name);
    }
    lua_pushfstring(L,
                    "AWS4-HMAC-SHA256 Credential=" REDACTED ", SignedHeaders=%s, Signature=" REDACTED,
                    t->signed_headers ? t->signed_headers : "");
    lua_setfield(L, -2, "authorization");
    if (r->body != NULL)
        lua_pushlstring(L, r->body, r->bodylen);
    else
        lua_pushnil(L);
    lua_pushinteger(L, r->attempts);
    lua_call(L, 5, 0);
    return 0;
}

enum { START_OK, START_TRACE_ERROR, START_NOMEM, START_FAILED };

static int add_header_line(struct curl_slist **l, const char *name, const char *value) {
    buf line = {0};
    if (buf_str(&line, name) || buf_str(&line, ": ") || buf_str(&line, value)) {
        buf_free(&line);
        return -1;
    }
    struct curl_slist *n = curl_slist_append(*l, line.p);
    buf_free(&line);
    if (n == NULL)
        return -1;
    *l = n;
    return 0;
}

/* Sign and hand one attempt of r to the multi handle. trace: stack index of the trace
 * function or 0. On START_TRACE_ERROR the error value is on the stack top. */
static int req_start(lua_State *L, s3_client *c, s3_req *r, CURL *easy, char *errbuf, int trace) {
    buf path = {0}, host = {0}, url = {0};
    char *wire_path = NULL;
    sigv4_result res;
    sigv4_kv hdrs[10];
    size_t nh = 0;
    int rc = START_NOMEM;
    memset(&res, 0, sizeof res);

    req_reset_attempt(r);
    r->attempts++;
    if (r->attempts == 1)
        r->first_start = monotime();

    if (c->path_style) {
        if (buf_str(&host, c->authority) || buf_str(&path, "/") || buf_str(&path, c->bucket))
            goto done;
        if (r->key != NULL && (buf_str(&path, "/") || buf_add(&path, r->key, r->keylen)))
            goto done;
    } else {
        if (buf_str(&host, c->bucket) || buf_str(&host, ".") || buf_str(&host, c->authority) ||
            buf_str(&path, "/"))
            goto done;
        if (r->key != NULL && buf_add(&path, r->key, r->keylen))
            goto done;
    }
    hdrs[nh++] = (sigv4_kv){"host", host.p};
    hdrs[nh++] = (sigv4_kv){"x-amz-content-sha256", r->payload_hash};
    if (r->content_md5[0] != '\0')
        hdrs[nh++] = (sigv4_kv){"content-md5", r->content_md5};
    if (r->content_type != NULL)
        hdrs[nh++] = (sigv4_kv){"content-type", r->content_type};

    /* Encoded here, with its length: sigv4 takes C strings, and a key with a NUL byte
     * must not become the shorter key before it (DELETE "a\0b" deleting "a"). */
    if ((wire_path = sigv4_uri_encode(path.p, path.n, 1)) == NULL)
        goto done;
    sigv4_request q;
    memset(&q, 0, sizeof q);
    q.method = r->method;
    q.path = wire_path;
    q.path_encoded = 1;
    q.query = r->query;
    q.nquery = r->nquery;
    q.headers = hdrs;
    q.nheaders = nh;
    q.payload_hash = r->payload_hash;
    q.access_key = c->access_key;
    q.secret_key = c->secret_key;
    q.session_token = c->session_token;
    q.region = c->region;
    q.service = "s3";
    q.now = time(NULL);
    q.s3 = 1;
    q.key_cache = &c->key_cache;
    if (sigv4_sign(&q, &res) != 0)
        goto done;
    for (size_t i = 0; i < res.nadd_headers && nh < sizeof hdrs / sizeof hdrs[0]; i++)
        hdrs[nh++] = res.add_headers[i];

    if (buf_str(&url, c->https ? "https://" : "http://") || buf_str(&url, host.p) ||
        buf_str(&url, res.encoded_path))
        goto done;
    if (res.query != NULL && res.query[0] != '\0' && (buf_str(&url, "?") || buf_str(&url, res.query)))
        goto done;
    r->url = url.p;
    url.p = NULL;

    for (size_t i = 0; i < nh; i++)
        if (add_header_line(&r->hdrs, hdrs[i].name, hdrs[i].value))
            goto done;
    if (add_header_line(&r->hdrs, "authorization", res.authorization))
        goto done;
    struct curl_slist *n = curl_slist_append(r->hdrs, "Expect:"); /* no 100-continue round trip */
    if (n == NULL)
        goto done;
    r->hdrs = n;
    if (r->content_type == NULL) {
        n = curl_slist_append(r->hdrs, "Content-Type:"); /* not curl's form default */
        if (n == NULL)
            goto done;
        r->hdrs = n;
    }

    if (trace != 0) {
        trace_args t = {r, hdrs, nh, res.signed_headers};
        lua_pushcfunction(L, trace_call);
        lua_pushlightuserdata(L, &t);
        lua_pushvalue(L, trace);
        if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
            rc = START_TRACE_ERROR;
            goto done;
        }
    }

    curl_easy_reset(easy);
    errbuf[0] = '\0';
    curl_easy_setopt(easy, CURLOPT_URL, r->url);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, r->hdrs);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, (void *)r);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, (void *)r);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
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
    if (curl_multi_add_handle(c->multi, easy) != CURLM_OK) {
        r->cc = CURLE_FAILED_INIT;
        r->errmsg = dupn("curl refused the request", 24);
        rc = START_FAILED;
        goto done;
    }
    r->state = RQ_RUNNING;
    rc = START_OK;
done:
    free(wire_path);
    sigv4_result_free(&res);
    buf_free(&path);
    buf_free(&host);
    buf_free(&url);
    return rc;
}

/* ---------------------------------------------------------------- XML */

#define XW_MAXDEPTH 16

typedef struct xw {
    XML_Parser p;
    int depth, failed;
    char names[XW_MAXDEPTH][48];
    unsigned char has_child[XW_MAXDEPTH]; /* the element at that depth has a child element */
    buf text;
    void *ud;
    void (*on_start)(struct xw *w, const char *name);
    void (*on_end)(struct xw *w, const char *name, const char *text, size_t len);
} xw;

static void xw_fail(xw *w) {
    w->failed = 1;
    XML_StopParser(w->p, XML_FALSE);
}

static const char *local_name(const char *n) {
    const char *c = strrchr(n, ':');
    return c ? c + 1 : n;
}

/* Only blanks: the text of an element that has child elements (S3 replies have no mixed
 * content; text next to a child means the reply is not what we think it is). */
static int xw_blank(const buf *t) {
    for (size_t i = 0; i < t->n; i++)
        if (t->p[i] != ' ' && t->p[i] != '\t' && t->p[i] != '\r' && t->p[i] != '\n')
            return 0;
    return 1;
}

static void XMLCALL xw_start(void *ud, const XML_Char *name, const XML_Char **attrs) {
    xw *w = ud;
    (void)attrs;
    if (w->failed)
        return;
    if (w->depth >= XW_MAXDEPTH || (w->depth > 0 && !xw_blank(&w->text))) {
        xw_fail(w);
        return;
    }
    if (w->depth > 0)
        w->has_child[w->depth - 1] = 1;
    w->has_child[w->depth] = 0;
    snprintf(w->names[w->depth], sizeof w->names[0], "%s", local_name(name));
    w->depth++;
    w->text.n = 0;
    if (w->text.p)
        w->text.p[0] = '\0';
    if (w->on_start)
        w->on_start(w, w->names[w->depth - 1]);
}

static void XMLCALL xw_end(void *ud, const XML_Char *name) {
    xw *w = ud;
    (void)name;
    if (w->failed)
        return;
    if (w->has_child[w->depth - 1] && !xw_blank(&w->text)) {
        xw_fail(w);
        return;
    }
    if (w->on_end)
        w->on_end(w, w->names[w->depth - 1], w->text.p ? w->text.p : "", w->text.n);
    w->depth--;
    w->text.n = 0;
    if (w->text.p)
        w->text.p[0] = '\0';
}

static void XMLCALL xw_chars(void *ud, const XML_Char *s, int len) {
    xw *w = ud;
    if (w->failed || w->depth == 0)
        return;
    if (w->text.n + (size_t)len > MAX_REPLY || buf_add(&w->text, s, (size_t)len) != 0)
        xw_fail(w);
}

static void XMLCALL xw_doctype(void *ud, const XML_Char *name, const XML_Char *sysid,
                               const XML_Char *pubid, int internal) {
    (void)name, (void)sysid, (void)pubid, (void)internal;
    xw_fail(ud); /* S3 replies have no DTD; entities are refused, not expanded */
}

/* Parse a whole document; root gets the root element's local name. 0 ok, -1 not XML. */
static int xw_parse(xw *w, const char *data, size_t len, char root[48]) {
    int ok = 0;
    root[0] = '\0';
    w->p = XML_ParserCreate("UTF-8");
    if (w->p == NULL)
        return -1;
    XML_SetUserData(w->p, w);
    XML_SetElementHandler(w->p, xw_start, xw_end);
    XML_SetCharacterDataHandler(w->p, xw_chars);
    XML_SetStartDoctypeDeclHandler(w->p, xw_doctype);
    if (len <= INT_MAX && XML_Parse(w->p, data, (int)len, 1) == XML_STATUS_OK && !w->failed)
        ok = 1;
    XML_ParserFree(w->p);
    w->p = NULL;
    buf_free(&w->text);
    return ok ? 0 : -1;
}

/* Capture of the root element's name: the first start. */
typedef struct err_body {
    char root[48];
    char code[64], message[512], request_id[128];
} err_body;

static void copy_trunc(char *dst, size_t cap, const char *s, size_t n) {
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, s, n);
    dst[n] = '\0';
}

static void err_end(xw *w, const char *name, const char *text, size_t len) {
    err_body *e = w->ud;
    if (w->depth != 2 || strcmp(w->names[0], "Error") != 0)
        return;
    if (strcmp(name, "Code") == 0)
        copy_trunc(e->code, sizeof e->code, text, len);
    else if (strcmp(name, "Message") == 0)
        copy_trunc(e->message, sizeof e->message, text, len);
    else if (strcmp(name, "RequestId") == 0)
        copy_trunc(e->request_id, sizeof e->request_id, text, len);
}

/* An <Error> document: 0 when the body is one, -1 otherwise. */
static int parse_error_body(const s3_req *r, err_body *e) {
    xw w;
    memset(&w, 0, sizeof w);
    memset(e, 0, sizeof *e);
    if (r->resp.n == 0)
        return -1;
    w.ud = e;
    w.on_end = err_end;
    if (xw_parse(&w, r->resp.p, r->resp.n, e->root) != 0)
        return -1;
    return e->code[0] != '\0' ? 0 : -1;
}

/* ---------------------------------------------------------------- outcome of an attempt */

static int transport_retryable(CURLcode cc) {
    switch (cc) {
    case CURLE_COULDNT_RESOLVE_HOST:
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

static int status_retryable(long status) {
    return status >= 500 || status == 429;
}

/* After an attempt ended: DONE, or WAITING for a retry with backoff and jitter. */
static void req_finish_attempt(s3_client *c, s3_req *r, CURLcode cc, const char *errbuf) {
    r->cc = cc;
    r->retryable = cc != CURLE_OK ? (!r->too_large && !r->oom && transport_retryable(cc))
                                  : status_retryable(r->status);
    if (cc != CURLE_OK && errbuf[0] != '\0')
        r->errmsg = dupn(errbuf, strlen(errbuf));
    r->state = RQ_DONE;
    if (!r->retryable || !r->idempotent || r->attempts >= c->max_attempts)
        return;
    double d = c->retry_base_seconds * (double)(1u << (r->attempts - 1 < 16 ? r->attempts - 1 : 16));
    if (d > 10.0)
        d = 10.0;
    d = d / 2 + random01() * d / 2; /* equal jitter: spread, but never hammer */
    double now = monotime();
    if (now + d - r->first_start > c->retry_max_seconds)
        return;
    r->next_at = now + d;
    r->state = RQ_WAITING;
}

static long easy_status(CURL *e) {
    long st = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &st);
    return st;
}

enum { DRIVE_OK, DRIVE_TRACE_ERROR, DRIVE_NOMEM, DRIVE_CURL };

/* CURLMOPT_SOCKETFUNCTION: keep c->pfds in step with the sockets curl waits on. */
static int on_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *sockp) {
    (void)e;
    (void)sockp;
    s3_client *c = userp;
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
                c->sock_oom = 1; /* drive() gives up: this socket would never be watched */
                return 0;
            }
            c->pfds = p;
            c->cappfds = cap;
        }
        c->pfds[c->npfds++].fd = fd;
    }
    c->pfds[i].events = (short)((what & CURL_POLL_IN ? POLLIN : 0) | (what & CURL_POLL_OUT ? POLLOUT : 0));
    c->pfds[i].revents = 0;
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: when curl wants CURL_SOCKET_TIMEOUT (ms < 0: never). */
static int on_timer(CURLM *m, long ms, void *userp) {
    (void)m;
    s3_client *c = userp;
    c->timer_at = ms < 0 ? -1.0 : monotime() + (double)ms / 1000.0;
    return 0;
}

static int drive_code(CURLMcode mc) {
    return mc == CURLM_OK ? DRIVE_OK : mc == CURLM_OUT_OF_MEMORY ? DRIVE_NOMEM : DRIVE_CURL;
}

/* Wait up to wait_ms for the sockets curl watches, then let curl act on the ready ones
 * and on its timer when due. 0, or a DRIVE_ code. */
static int drive_wait(s3_client *c, long wait_ms) {
    int still = 0;
    if (c->timer_at >= 0) {
        double ms = (c->timer_at - monotime()) * 1000.0;
        if (ms < (double)wait_ms)
            wait_ms = ms <= 0 ? 0 : (long)ms + 1;
    }
    int n = poll(c->pfds, (nfds_t)c->npfds, (int)wait_ms);
    if (n > 0) {
        /* on_socket may reorder c->pfds while curl acts: note the ready ones first */
        curl_socket_t fds[64];
        int flags[64], k = 0;
        for (size_t i = 0; i < c->npfds && k < 64; i++) {
            short re = c->pfds[i].revents;
            if (re == 0)
                continue;
            fds[k] = c->pfds[i].fd;
            flags[k++] = (re & (POLLIN | POLLHUP) ? CURL_CSELECT_IN : 0) | (re & POLLOUT ? CURL_CSELECT_OUT : 0) |
                         (re & (POLLERR | POLLNVAL) ? CURL_CSELECT_ERR : 0);
            c->pfds[i].revents = 0;
        }
        for (int j = 0; j < k; j++) {
            int rc = drive_code(curl_multi_socket_action(c->multi, fds[j], flags[j], &still));
            if (rc != DRIVE_OK)
                return rc;
        }
    }
    if (c->timer_at >= 0 && monotime() >= c->timer_at) {
        c->timer_at = -1.0;
        int rc = drive_code(curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &still));
        if (rc != DRIVE_OK)
            return rc;
    }
    return c->sock_oom ? DRIVE_NOMEM : DRIVE_OK;
}

/* Run every request of b to completion, at most conc at once, on the client's multi
 * handle (one connection pool). Never raises: on DRIVE_TRACE_ERROR the trace hook's
 * error is on the stack top. No easy handle is left attached when it returns. */
static int drive(lua_State *L, s3_client *c, s3_batch *b, int conc, int trace) {
    size_t next = 0, done = 0, waiting = 0;
    int running = 0, rc = DRIVE_OK;
    CURLcode down = CURLE_OK; /* a request gave up on the server: send no more (fail fast) */
    if ((size_t)conc > b->nreq)
        conc = b->nreq > 0 ? (int)b->nreq : 1;
    b->easy = calloc((size_t)conc, sizeof *b->easy);
    b->slot_req = calloc((size_t)conc, sizeof *b->slot_req);
    b->errbufs = calloc((size_t)conc, CURL_ERROR_SIZE);
    if (b->easy == NULL || b->slot_req == NULL || b->errbufs == NULL)
        return DRIVE_NOMEM;
    b->nslots = conc;
    for (int i = 0; i < conc; i++)
        if ((b->easy[i] = c->nidle > 0 ? c->idle[--c->nidle] : curl_easy_init()) == NULL)
            return DRIVE_NOMEM;
    for (size_t i = 0; i < b->nreq; i++)
        if (b->reqs[i].state == RQ_DONE)
            done++;

    c->busy = 1;
    while (done < b->nreq) {
        double now = monotime();
        /* fill free slots: due retries first, then new requests */
        for (int s = 0; s < conc; s++) {
            if (b->slot_req[s] != NULL)
                continue;
            s3_req *r = NULL;
            if (waiting > 0) {
                for (size_t i = 0; i < b->nreq && r == NULL; i++)
                    if (b->reqs[i].state == RQ_WAITING && b->reqs[i].next_at <= now)
                        r = &b->reqs[i];
                if (r != NULL)
                    waiting--;
            }
            while (r == NULL && next < b->nreq) {
                if (b->reqs[next].state == RQ_QUEUED)
                    r = &b->reqs[next];
                next++;
            }
            if (r == NULL)
                break;
            if (down != CURLE_OK) {
                /* The server did not answer another request of this call through all its
                 * attempts: this one would wait out the same timeouts. Fail it unsent, so a
                 * dead or frozen server costs one round of timeouts, not one per request. */
                free(r->errmsg);
                r->errmsg = dupn("not sent: the server did not answer an earlier request of this call",
                                 sizeof "not sent: the server did not answer an earlier request of this call" - 1);
                r->cc = down;
                r->retryable = 1;
                r->state = RQ_DONE;
                done++;
                s--; /* the slot is still free */
                continue;
            }
            int st = req_start(L, c, r, b->easy[s], b->errbufs + (size_t)s * CURL_ERROR_SIZE, trace);
            if (st == START_TRACE_ERROR) {
                rc = DRIVE_TRACE_ERROR;
                goto out;
            } else if (st == START_NOMEM) {
                rc = DRIVE_NOMEM;
                goto out;
            } else if (st == START_FAILED) {
                r->state = RQ_DONE;
                done++;
                s--; /* the slot is still free */
                continue;
            }
            b->slot_req[s] = r;
            running++;
        }
        if (done >= b->nreq)
            break;

        /* wait for traffic, the next due retry or curl's timer; then let curl act */
        long wait_ms = 1000;
        if (running < conc && waiting > 0) {
            double now2 = monotime();
            for (size_t i = 0; i < b->nreq; i++) {
                if (b->reqs[i].state != RQ_WAITING)
                    continue;
                double ms = (b->reqs[i].next_at - now2) * 1000.0;
                if (ms < 0)
                    ms = 0;
                if (ms < (double)wait_ms)
                    wait_ms = (long)ms;
            }
        }
        if ((rc = drive_wait(c, wait_ms)) != DRIVE_OK)
            goto out;

        int q = 0;
        CURLMsg *m;
        while ((m = curl_multi_info_read(c->multi, &q)) != NULL) {
            if (m->msg != CURLMSG_DONE)
                continue;
            CURL *e = m->easy_handle;
            CURLcode cc = m->data.result;
            int s;
            for (s = 0; s < conc && b->easy[s] != e; s++) {
            }
            if (s == conc)
                continue; /* not ours: cannot happen */
            s3_req *r = b->slot_req[s];
            long nconn = 0;
            r->status = easy_status(e);
            if (curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &nconn) == CURLE_OK)
                c->n_connects += nconn;
            c->n_requests++;
            curl_multi_remove_handle(c->multi, e);
            b->slot_req[s] = NULL;
            running--;
            req_finish_attempt(c, r, cc, b->errbufs + (size_t)s * CURL_ERROR_SIZE);
            if (r->state == RQ_DONE) {
                done++;
                if (cc != CURLE_OK && r->retryable && !r->too_large && !r->oom)
                    down = cc; /* unreachable, timed out or cut off, after its retries */
            } else {
                waiting++;
                c->n_retries++;
            }
        }
    }
out:
    for (int s = 0; s < conc; s++) {
        if (b->slot_req[s] != NULL) {
            curl_multi_remove_handle(c->multi, b->easy[s]);
            b->slot_req[s]->state = RQ_DONE;
            b->slot_req[s] = NULL;
        }
        /* detached: back to the client for the next call */
        if (c->nidle < MAX_CONCURRENCY) {
            curl_easy_reset(b->easy[s]); /* drop pointers into this batch (headers, error buffer) */
            c->idle[c->nidle++] = b->easy[s];
            b->easy[s] = NULL;
        }
    }
    c->busy = 0;
    return rc;
}

/* Run the batch; raise (after freeing it) when drive() could not finish. */
static void run_batch(lua_State *L, s3_client *c, s3_batch *b, int conc) {
    int trace = 0;
    luaL_checkstack(L, 10, NULL);
    lua_getiuservalue(L, 1, 1); /* ... trace */
    if (lua_isfunction(L, -1))
        trace = lua_gettop(L);
    int rc = drive(L, c, b, conc, trace);
    if (rc == DRIVE_TRACE_ERROR) {
        batch_release(b);
        lua_error(L);
    } else if (rc == DRIVE_NOMEM) {
        batch_release(b);
        luaL_error(L, "not enough memory");
    } else if (rc == DRIVE_CURL) {
        batch_release(b);
        luaL_error(L, "s3: libcurl's multi interface failed");
    }
    if (trace == 0)
        lua_pop(L, 1);
    else
        lua_remove(L, trace);
}

/* ---------------------------------------------------------------- errors */

static const char *status_code(long st) {
    switch (st) {
    case 301: return "PermanentRedirect";
    case 307: return "TemporaryRedirect";
    case 400: return "BadRequest";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "NotFound";
    case 405: return "MethodNotAllowed";
    case 409: return "Conflict";
    case 412: return "PreconditionFailed";
    case 429: return "TooManyRequests";
    case 500: return "InternalError";
    case 501: return "NotImplemented";
    case 502: return "BadGateway";
    case 503: return "ServiceUnavailable";
    case 504: return "GatewayTimeout";
    default: return NULL;
    }
}

static void set_str(lua_State *L, const char *field, const char *v) {
    lua_pushstring(L, v);
    lua_setfield(L, -2, field);
}

/* Push the error table of a request that failed (transport, HTTP status, or refused). */
static void push_req_error(lua_State *L, const s3_req *r, const char *op, const char *code_override,
                           const char *msg_override) {
    err_body e;
    char codebuf[32];
    const char *code, *msg;
    memset(&e, 0, sizeof e);
    lua_createtable(L, 0, 9);
    set_str(L, "kind", "s3");
    set_str(L, "op", op);
    if (r->key != NULL) {
        lua_pushlstring(L, r->key, r->keylen);
        lua_setfield(L, -2, "key");
    }
    if (r->local_code != NULL) {
        code = r->local_code;
        msg = msg_override ? msg_override : "an empty key is refused before any request";
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "retryable");
    } else if (r->cc != CURLE_OK) {
        if (r->too_large) {
            code = "ReplyTooLarge";
            msg = "reply larger than the limit";
        } else if (r->oom) {
            code = "OutOfMemory";
            msg = "not enough memory for the reply";
        } else {
            code = r->cc == CURLE_OPERATION_TIMEDOUT ? "timeout"
                   : (r->cc == CURLE_PEER_FAILED_VERIFICATION || r->cc == CURLE_SSL_CACERT_BADFILE ||
                      r->cc == CURLE_SSL_CERTPROBLEM)
                       ? "tls"
                   : transport_retryable(r->cc) ? "connection"
                                                : "curl";
            msg = r->errmsg ? r->errmsg : curl_easy_strerror(r->cc);
        }
        lua_pushboolean(L, r->retryable);
        lua_setfield(L, -2, "retryable");
    } else {
        lua_pushinteger(L, r->status);
        lua_setfield(L, -2, "status");
        if (parse_error_body(r, &e) == 0) {
            code = e.code;
            msg = e.message[0] ? e.message : e.code;
        } else {
            code = status_code(r->status);
            if (code == NULL) {
                snprintf(codebuf, sizeof codebuf, "HTTP%ld", r->status);
                code = codebuf;
            }
            msg = r->resp.n > 0 ? "HTTP error with a reply that is not an S3 error document"
                                : "HTTP error without a reply body";
        }
        lua_pushboolean(L, status_retryable(r->status));
        lua_setfield(L, -2, "retryable");
        if (e.request_id[0] != '\0')
            set_str(L, "request_id", e.request_id);
        else if (r->h_reqid != NULL)
            set_str(L, "request_id", r->h_reqid);
    }
    if (code_override != NULL)
        code = code_override;
    if (msg_override != NULL)
        msg = msg_override;
    set_str(L, "code", code);
    set_str(L, "message", msg);
    lua_pushinteger(L, r->attempts);
    lua_setfield(L, -2, "attempts");
}

/* nil, err for a failed request; returns 2. */
static int fail_req(lua_State *L, const s3_req *r, const char *op) {
    lua_pushnil(L);
    push_req_error(L, r, op, NULL, NULL);
    return 2;
}

static int http_ok(const s3_req *r) {
    return r->local_code == NULL && r->cc == CURLE_OK && r->status / 100 == 2;
}

/* ---------------------------------------------------------------- helpers */

static void set_md5(s3_req *r) {
    unsigned char md[16];
    unsigned int mdlen = 0;
    EVP_Digest(r->body, r->bodylen, md, &mdlen, EVP_md5(), NULL);
    EVP_EncodeBlock((unsigned char *)r->content_md5, md, 16);
}

static void set_body(s3_req *r, const char *body, size_t len, int md5) {
    r->body = body;
    r->bodylen = len;
    sigv4_sha256_hex(body, len, r->payload_hash);
    if (md5)
        set_md5(r);
}

/* The key argument at idx: a string; an empty one is refused before any request. */
static const char *check_key(lua_State *L, int idx, size_t *len) {
    return luaL_checklstring(L, idx, len);
}

static void refuse_empty(s3_req *r) {
    r->local_code = "EmptyKey";
    r->state = RQ_DONE;
}

static void strip_quotes(lua_State *L, const char *s) {
    size_t n = strlen(s);
    if (n >= 2 && s[0] == '"' && s[n - 1] == '"')
        lua_pushlstring(L, s + 1, n - 2);
    else
        lua_pushstring(L, s);
}

static int opt_concurrency(lua_State *L, int idx, s3_client *c) {
    int conc = c->concurrency;
    if (lua_istable(L, idx)) {
        lua_getfield(L, idx, "concurrency");
        if (!lua_isnil(L, -1)) {
            lua_Integer v = luaL_checkinteger(L, -1);
            if (v < 1 || v > MAX_CONCURRENCY)
                luaL_error(L, "concurrency must be 1..%d", MAX_CONCURRENCY);
            conc = (int)v;
        }
        lua_pop(L, 1);
    } else if (!lua_isnoneornil(L, idx)) {
        luaL_typeerror(L, idx, "table or nil");
    }
    return conc;
}

/* Check a keys table (array of strings), return its length. Raises on misuse. */
static size_t check_keys(lua_State *L, int idx, size_t *total) {
    luaL_checktype(L, idx, LUA_TTABLE);
    size_t n = (size_t)lua_rawlen(L, idx);
    *total = 0;
    for (size_t i = 1; i <= n; i++) {
        if (lua_rawgeti(L, idx, (lua_Integer)i) != LUA_TSTRING)
            luaL_error(L, "keys[%d] must be a string, not %s", (int)i, luaL_typename(L, -1));
        *total += lua_rawlen(L, -1) + 1;
        lua_pop(L, 1);
    }
    return n;
}

/* Copy the keys into the batch (they must not move while C points at them). */
static void copy_keys(lua_State *L, int idx, s3_batch *b, size_t n, size_t total) {
    b->keys = calloc(n > 0 ? n : 1, sizeof *b->keys);
    b->arena = malloc(total > 0 ? total : 1);
    if (b->keys == NULL || b->arena == NULL)
        luaL_error(L, "not enough memory");
    b->nkeys = n;
    char *p = b->arena;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        lua_rawgeti(L, idx, (lua_Integer)(i + 1));
        const char *s = lua_tolstring(L, -1, &len);
        memcpy(p, s, len);
        p[len] = '\0';
        b->keys[i].s = p;
        b->keys[i].len = len;
        p += len + 1;
        lua_pop(L, 1);
    }
}

/* ---------------------------------------------------------------- head */

static void push_head_result(lua_State *L, const s3_req *r) {
    lua_createtable(L, 0, 6);
    lua_pushboolean(L, r->status != 404);
    lua_setfield(L, -2, "exists");
    if (r->status / 100 == 2) {
        if (r->has_len) {
            lua_pushinteger(L, (lua_Integer)r->h_len);
            lua_setfield(L, -2, "size");
        }
        if (r->h_etag != NULL) {
            strip_quotes(L, r->h_etag);
            lua_setfield(L, -2, "etag");
        }
        if (r->h_lastmod != NULL) {
            set_str(L, "last_modified", r->h_lastmod);
            time_t t = curl_getdate(r->h_lastmod, NULL);
            if (t != (time_t)-1) {
                lua_pushinteger(L, (lua_Integer)t);
                lua_setfield(L, -2, "mtime");
            }
        }
    }
}

static int head_ok(const s3_req *r) {
    return r->local_code == NULL && r->cc == CURLE_OK && (r->status / 100 == 2 || r->status == 404);
}

static void init_head(s3_req *r, const char *key, size_t len) {
    r->method = "HEAD";
    r->nobody = 1;
    r->key = key;
    r->keylen = len;
    if (len == 0)
        refuse_empty(r);
}

/* client:head(key) -> {exists, size, etag, last_modified, mtime} | nil, err */
static int s3_head(lua_State *L) {
    s3_client *c = check_client(L);
    size_t len;
    const char *key = check_key(L, 2, &len);
    s3_batch *b = batch_new(L, 1);
    init_head(&b->reqs[0], key, len);
    run_batch(L, c, b, 1);
    const s3_req *r = &b->reqs[0];
    int n;
    if (head_ok(r)) {
        push_head_result(L, r);
        n = 1;
    } else {
        n = fail_req(L, r, "head");
    }
    batch_release(b);
    return n;
}

/* client:head_many(keys, {concurrency=N}) -> results, nfailed; results[i] is
 * {key, exists, size, etag, last_modified, mtime} or {key, err} */
static int s3_head_many(lua_State *L) {
    s3_client *c = check_client(L);
    size_t total, n = check_keys(L, 2, &total);
    int conc = opt_concurrency(L, 3, c);
    s3_batch *b = batch_new(L, n);
    copy_keys(L, 2, b, n, total);
    for (size_t i = 0; i < n; i++)
        init_head(&b->reqs[i], b->keys[i].s, b->keys[i].len);
    run_batch(L, c, b, conc);
    lua_Integer failed = 0;
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        const s3_req *r = &b->reqs[i];
        if (head_ok(r)) {
            push_head_result(L, r);
        } else {
            lua_createtable(L, 0, 2);
            push_req_error(L, r, "head", NULL, NULL);
            lua_setfield(L, -2, "err");
            failed++;
        }
        lua_pushlstring(L, r->key, r->keylen);
        lua_setfield(L, -2, "key");
        lua_rawseti(L, -2, (lua_Integer)(i + 1));
    }
    lua_pushinteger(L, failed);
    batch_release(b);
    return 2;
}

/* client:head_bucket() -> true | nil, err */
static int s3_head_bucket(lua_State *L) {
    s3_client *c = check_client(L);
    s3_batch *b = batch_new(L, 1);
    b->reqs[0].method = "HEAD";
    b->reqs[0].nobody = 1;
    run_batch(L, c, b, 1);
    int n;
    if (http_ok(&b->reqs[0])) {
        lua_pushboolean(L, 1);
        n = 1;
    } else {
        n = fail_req(L, &b->reqs[0], "head_bucket");
    }
    batch_release(b);
    return n;
}

/* ---------------------------------------------------------------- get, put, delete */

/* client:get(key) -> body, {size, etag, last_modified, content_type} | nil, err */
static int s3_get(lua_State *L) {
    s3_client *c = check_client(L);
    size_t len;
    const char *key = check_key(L, 2, &len);
    s3_batch *b = batch_new(L, 1);
    s3_req *r = &b->reqs[0];
    r->method = "GET";
    r->key = key;
    r->keylen = len;
    if (len == 0)
        refuse_empty(r);
    run_batch(L, c, b, 1);
    int n;
    if (http_ok(r)) {
        lua_pushlstring(L, r->resp.p ? r->resp.p : "", r->resp.n);
        lua_createtable(L, 0, 4);
        lua_pushinteger(L, (lua_Integer)r->resp.n);
        lua_setfield(L, -2, "size");
        if (r->h_etag) {
            strip_quotes(L, r->h_etag);
            lua_setfield(L, -2, "etag");
        }
        if (r->h_lastmod)
            set_str(L, "last_modified", r->h_lastmod);
        if (r->h_ctype)
            set_str(L, "content_type", r->h_ctype);
        n = 2;
    } else {
        n = fail_req(L, r, "get");
    }
    batch_release(b);
    return n;
}

/* client:put(key, body, {content_type=}) -> {etag} | nil, err */
static int s3_put(lua_State *L) {
    s3_client *c = check_client(L);
    size_t len, blen;
    const char *key = check_key(L, 2, &len);
    const char *body = luaL_checklstring(L, 3, &blen);
    const char *ctype = "application/octet-stream";
    if (!lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        lua_getfield(L, 4, "content_type");
        if (!lua_isnil(L, -1)) {
            size_t clen;
            ctype = luaL_checklstring(L, -1, &clen);
            /* a header value: CR, LF or NUL would end it and start another header */
            if (strcspn(ctype, "\r\n") != clen)
                luaL_argerror(L, 4, "content_type must not contain CR, LF or NUL");
        }
        lua_pop(L, 1); /* still anchored by the options table for this call */
    }
    s3_batch *b = batch_new(L, 1);
    s3_req *r = &b->reqs[0];
    r->method = "PUT";
    r->key = key;
    r->keylen = len;
    r->content_type = ctype;
    set_body(r, body, blen, 1);
    if (len == 0)
        refuse_empty(r);
    run_batch(L, c, b, 1);
    int n;
    if (http_ok(r)) {
        lua_createtable(L, 0, 1);
        if (r->h_etag) {
            strip_quotes(L, r->h_etag);
            lua_setfield(L, -2, "etag");
        }
        n = 1;
    } else {
        n = fail_req(L, r, "put");
    }
    batch_release(b);
    return n;
}

/* DELETE of a missing key is 204 on S3; a 404 NoSuchKey (some servers) means gone too. */
static int delete_ok(const s3_req *r) {
    if (http_ok(r))
        return 1;
    if (r->local_code == NULL && r->cc == CURLE_OK && r->status == 404) {
        err_body e;
        return parse_error_body(r, &e) == 0 && strcmp(e.code, "NoSuchKey") == 0;
    }
    return 0;
}

static void init_delete(s3_req *r, const char *key, size_t len) {
    r->method = "DELETE";
    r->key = key;
    r->keylen = len;
    if (len == 0)
        refuse_empty(r);
}

/* client:delete(key) -> true | nil, err */
static int s3_delete(lua_State *L) {
    s3_client *c = check_client(L);
    size_t len;
    const char *key = check_key(L, 2, &len);
    s3_batch *b = batch_new(L, 1);
    init_delete(&b->reqs[0], key, len);
    run_batch(L, c, b, 1);
    int n;
    if (delete_ok(&b->reqs[0])) {
        lua_pushboolean(L, 1);
        n = 1;
    } else {
        n = fail_req(L, &b->reqs[0], "delete");
    }
    batch_release(b);
    return n;
}

/* ---------------------------------------------------------------- delete_many */

/* Can XML 1.0 carry this key unchanged through the request and the reply? Valid UTF-8,
 * XML Char, and no control characters (a parser may normalise \r and \t\n). */
static int xml_safe(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            if (c < 0x20)
                return 0;
            i++;
            continue;
        }
        uint32_t cp;
        size_t len;
        if ((c & 0xE0) == 0xC0)
            cp = c & 0x1F, len = 2;
        else if ((c & 0xF0) == 0xE0)
            cp = c & 0x0F, len = 3;
        else if ((c & 0xF8) == 0xF0)
            cp = c & 0x07, len = 4;
        else
            return 0;
        if (i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000))
            return 0;
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF) || cp == 0xFFFE || cp == 0xFFFF)
            return 0;
        i += len;
    }
    return 1;
}

static int xml_escape(buf *b, const char *s, size_t n) {
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        const char *rep = NULL;
        switch (s[i]) {
        case '&': rep = "&amp;"; break;
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '"': rep = "&quot;"; break;
        case '\'': rep = "&apos;"; break;
        default: break;
        }
        if (rep == NULL)
            continue;
        if (buf_add(b, s + start, i - start) || buf_str(b, rep))
            return -1;
        start = i + 1;
    }
    return buf_add(b, s + start, n - start);
}

static int bkey_cmp(const void *a, const void *b) {
    const bkey *x = *(const bkey *const *)a, *y = *(const bkey *const *)b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, n);
    if (c != 0)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

typedef struct dm_parse {
    s3_req *r;
    char key_seen, code_seen;
    buf key;
    char code[64], message[256];
    int bad;
} dm_parse;

/* Mark every request key equal to the reply's key (duplicates included). */
static void dm_apply(dm_parse *d, int deleted) {
    bkey probe = {d->key.p ? d->key.p : "", d->key.n, 0, 0, "", ""}, *pp = &probe;
    bkey **hit = bsearch(&pp, d->r->order, d->r->norder, sizeof *d->r->order, bkey_cmp);
    if (hit == NULL)
        return; /* a key we did not ask for: ignore */
    while (hit > d->r->order && bkey_cmp(hit - 1, &pp) == 0)
        hit--;
    for (; hit < d->r->order + d->r->norder && bkey_cmp(hit, &pp) == 0; hit++) {
        bkey *k = *hit;
        if (deleted) {
            if (k->state == 0)
                k->state = 1;
        } else {
            k->state = 2; /* an error wins over a Deleted for the same key */
            snprintf(k->code, sizeof k->code, "%s", d->code[0] ? d->code : "UnknownError");
            snprintf(k->message, sizeof k->message, "%s", d->message);
        }
    }
}

static void dm_start(xw *w, const char *name) {
    dm_parse *d = w->ud;
    if (w->depth == 2 && (strcmp(name, "Deleted") == 0 || strcmp(name, "Error") == 0)) {
        d->key.n = 0;
        d->key_seen = d->code_seen = 0;
        d->code[0] = d->message[0] = '\0';
    }
}

static void dm_end(xw *w, const char *name, const char *text, size_t len) {
    dm_parse *d = w->ud;
    if (w->depth == 3 && (strcmp(w->names[1], "Deleted") == 0 || strcmp(w->names[1], "Error") == 0)) {
        if (strcmp(name, "Key") == 0) {
            d->key.n = 0;
            if (buf_add(&d->key, text, len) != 0)
                xw_fail(w);
            d->key_seen = 1;
        } else if (strcmp(name, "Code") == 0) {
            copy_trunc(d->code, sizeof d->code, text, len);
            d->code_seen = 1;
        } else if (strcmp(name, "Message") == 0) {
            copy_trunc(d->message, sizeof d->message, text, len);
        }
    } else if (w->depth == 2 && strcmp(w->names[0], "DeleteResult") == 0) {
        int del = strcmp(name, "Deleted") == 0;
        if (!del && strcmp(name, "Error") != 0)
            return;
        if (!d->key_seen) {
            d->bad = 1; /* an entry without a key: the reply cannot be trusted */
            return;
        }
        dm_apply(d, del);
    }
}

static int retryable_code(const char *code) {
    return strcmp(code, "InternalError") == 0 || strcmp(code, "SlowDown") == 0 ||
           strcmp(code, "ServiceUnavailable") == 0 || strcmp(code, "OperationAborted") == 0;
}

/* Build one DeleteObjects request for keys order[0..n). 0 ok, -1 out of memory. */
static int build_delete_objects(s3_req *r, bkey **order, size_t n, int quiet) {
    static sigv4_kv q_delete = {"delete", ""};
    buf body = {0};
    if (buf_str(&body, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Delete xmlns=\"" S3_XMLNS "\">") ||
        buf_str(&body, quiet ? "<Quiet>true</Quiet>" : "<Quiet>false</Quiet>"))
        goto fail;
    for (size_t i = 0; i < n; i++) {
        if (buf_str(&body, "<Object><Key>") || xml_escape(&body, order[i]->s, order[i]->len) ||
            buf_str(&body, "</Key></Object>"))
            goto fail;
    }
    if (buf_str(&body, "</Delete>"))
        goto fail;
    r->method = "POST";
    r->query[0] = q_delete;
    r->nquery = 1;
    r->content_type = "application/xml";
    r->body_owned = body.p;
    set_body(r, body.p, body.n, 1);
    r->order = order;
    r->norder = n;
    qsort(r->order, n, sizeof *r->order, bkey_cmp);
    return 0;
fail:
    buf_free(&body);
    return -1;
}

/* Apply a DeleteObjects reply to the keys of its request (order: sorted by bkey_cmp, states
 * 0). A key is deleted only when the reply lists it in <Deleted> (or, Quiet, does not list
 * it as an <Error>); listed errors set state 2, unmentioned keys state 4. Returns 0, or -1
 * when the reply is not a well-formed DeleteResult (states then mean nothing: no key is
 * deleted). Separate from the network so spec/fuzz can drive it. */
static int delete_result_apply(const char *body, size_t len, bkey **order, size_t n, int quiet) {
    s3_req r;
    dm_parse d;
    xw w;
    char root[48];
    memset(&r, 0, sizeof r);
    memset(&d, 0, sizeof d);
    memset(&w, 0, sizeof w);
    r.order = order;
    r.norder = n;
    d.r = &r;
    w.ud = &d;
    w.on_start = dm_start;
    w.on_end = dm_end;
    int ok = xw_parse(&w, body ? body : "", len, root) == 0 &&
             strcmp(w.names[0], "DeleteResult") == 0 && !d.bad;
    buf_free(&d.key);
    if (!ok)
        return -1;
    for (size_t k = 0; k < n; k++) {
        if (order[k]->state == 0 && quiet)
            order[k]->state = 1; /* Quiet: only errors are listed */
        else if (order[k]->state == 0)
            order[k]->state = 4; /* not mentioned: not deleted */
    }
    return 0;
}

/* client:delete_many(keys, {concurrency=N, quiet=false, batch=1000}) -> results, nfailed;
 * results[i] is {key, deleted=true} or {key, deleted=false, err} */
static int s3_delete_many(lua_State *L) {
    s3_client *c = check_client(L);
    size_t total, n = check_keys(L, 2, &total);
    int conc = opt_concurrency(L, 3, c), quiet = 0;
    lua_Integer per = MAX_DELETE_KEYS;
    if (lua_istable(L, 3)) {
        lua_getfield(L, 3, "quiet");
        quiet = lua_toboolean(L, -1);
        lua_getfield(L, 3, "batch");
        if (!lua_isnil(L, -1)) {
            per = luaL_checkinteger(L, -1);
            if (per < 1 || per > MAX_DELETE_KEYS)
                luaL_error(L, "batch must be 1..%d", MAX_DELETE_KEYS);
        }
        lua_pop(L, 2);
    }
    /* how many requests: chunks of XML-safe keys, single DELETEs for the rest */
    size_t nxml = 0, nsingle = 0;
    luaL_checkstack(L, 4, NULL);
    for (size_t i = 1; i <= n; i++) {
        size_t len;
        lua_rawgeti(L, 2, (lua_Integer)i);
        const char *s = lua_tolstring(L, -1, &len);
        if (len > 0 && xml_safe((const unsigned char *)s, len))
            nxml++;
        else if (len > 0)
            nsingle++;
        lua_pop(L, 1);
    }
    size_t nchunks = (nxml + (size_t)per - 1) / (size_t)per;
    s3_batch *b = batch_new(L, nchunks + nsingle);
    copy_keys(L, 2, b, n, total);

    size_t ri = nchunks, ci = 0, inchunk = 0;
    bkey **order = NULL;
    for (size_t i = 0; i < n; i++) {
        bkey *k = &b->keys[i];
        if (k->len == 0) {
            snprintf(k->code, sizeof k->code, "EmptyKey");
            snprintf(k->message, sizeof k->message, "an empty key is refused before any request");
            k->state = 2;
            k->req = SIZE_MAX;
        } else if (!xml_safe((const unsigned char *)k->s, k->len)) {
            init_delete(&b->reqs[ri], k->s, k->len);
            k->req = ri++;
        } else {
            if (order == NULL) {
                size_t left = nxml - ci * (size_t)per;
                size_t m = left < (size_t)per ? left : (size_t)per;
                order = malloc(m * sizeof *order);
                if (order == NULL)
                    luaL_error(L, "not enough memory");
                b->reqs[ci].order = order; /* owned by the batch from now on */
                b->reqs[ci].norder = m;
            }
            order[inchunk++] = k;
            k->req = ci;
            if (inchunk == b->reqs[ci].norder) {
                if (build_delete_objects(&b->reqs[ci], order, inchunk, quiet) != 0)
                    luaL_error(L, "not enough memory");
                ci++;
                inchunk = 0;
                order = NULL;
            }
        }
    }
    run_batch(L, c, b, conc);

    /* outcomes per key */
    for (size_t j = 0; j < nchunks; j++) {
        s3_req *r = &b->reqs[j];
        if (!http_ok(r) || r->status != 200 ||
            delete_result_apply(r->resp.p, r->resp.n, r->order, r->norder, quiet) != 0)
            for (size_t k = 0; k < r->norder; k++)
                r->order[k]->state = 3; /* failed, or untrusted reply */
    }
    lua_Integer failed = 0;
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        bkey *k = &b->keys[i];
        lua_createtable(L, 0, 3);
        lua_pushlstring(L, k->s, k->len);
        lua_setfield(L, -2, "key");
        int ok = 0;
        if (k->req != SIZE_MAX && k->req >= nchunks) { /* single DELETE */
            const s3_req *r = &b->reqs[k->req];
            ok = delete_ok(r);
            if (!ok)
                push_req_error(L, r, "delete", NULL, NULL);
        } else if (k->state == 1) {
            ok = 1;
        } else if (k->state == 3) {
            const s3_req *r = &b->reqs[k->req];
            if (http_ok(r))
                push_req_error(L, r, "delete_many", "MalformedReply",
                               "DeleteObjects reply is not a DeleteResult document");
            else
                push_req_error(L, r, "delete_many", NULL, NULL);
            lua_pushlstring(L, k->s, k->len);
            lua_setfield(L, -2, "key");
        } else {
            lua_createtable(L, 0, 6);
            set_str(L, "kind", "s3");
            set_str(L, "op", "delete_many");
            lua_pushlstring(L, k->s, k->len);
            lua_setfield(L, -2, "key");
            if (k->req != SIZE_MAX) { /* the reply's status: a reply was received */
                lua_pushinteger(L, b->reqs[k->req].status);
                lua_setfield(L, -2, "status");
            }
            if (k->state == 4) {
                set_str(L, "code", "NotInReply");
                set_str(L, "message", "the DeleteObjects reply does not mention this key");
                lua_pushboolean(L, 1);
            } else {
                set_str(L, "code", k->code);
                set_str(L, "message", k->message[0] ? k->message : k->code);
                lua_pushboolean(L, strcmp(k->code, "EmptyKey") != 0 && retryable_code(k->code));
            }
            lua_setfield(L, -2, "retryable");
            if (k->req != SIZE_MAX && b->reqs[k->req].h_reqid)
                set_str(L, "request_id", b->reqs[k->req].h_reqid);
        }
        if (!ok) {
            lua_setfield(L, -2, "err");
            failed++;
        }
        lua_pushboolean(L, ok);
        lua_setfield(L, -2, "deleted");
        lua_rawseti(L, -2, (lua_Integer)(i + 1));
    }
    lua_pushinteger(L, failed);
    batch_release(b);
    return 2;
}

/* ---------------------------------------------------------------- list */

static int list_push_entry(list_out *l) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        list_entry *e = realloc(l->e, cap * sizeof *e);
        if (e == NULL)
            return -1;
        l->e = e;
        l->cap = cap;
    }
    l->e[l->n++] = l->cur;
    memset(&l->cur, 0, sizeof l->cur);
    return 0;
}

static int list_push_prefix(list_out *l) {
    if (l->np == l->pcap) {
        size_t cap = l->pcap ? l->pcap * 2 : 16;
        char **p = realloc(l->prefixes, cap * sizeof *p);
        if (p == NULL)
            return -1;
        l->prefixes = p;
        size_t *pl = realloc(l->prefixlens, cap * sizeof *pl);
        if (pl == NULL)
            return -1;
        l->prefixlens = pl;
        l->pcap = cap;
    }
    l->prefixes[l->np] = l->cur_prefix;
    l->prefixlens[l->np++] = l->cur_prefixlen;
    l->cur_prefix = NULL;
    return 0;
}

static void list_end(xw *w, const char *name, const char *text, size_t len) {
    list_out *l = w->ud;
    if (strcmp(w->names[0], "ListBucketResult") != 0)
        return;
    if (w->depth == 2) {
        if (strcmp(name, "IsTruncated") == 0) {
            l->truncated = len == 4 && strncmp(text, "true", 4) == 0;
        } else if (strcmp(name, "NextContinuationToken") == 0) {
            free(l->next_token);
            if ((l->next_token = dupn(text, len)) == NULL)
                xw_fail(w);
        } else if (strcmp(name, "EncodingType") == 0) {
            l->url_encoded = len == 3 && strncmp(text, "url", 3) == 0;
        } else if (strcmp(name, "Contents") == 0) {
            if (l->cur.key == NULL || list_push_entry(l) != 0)
                xw_fail(w);
        } else if (strcmp(name, "CommonPrefixes") == 0) {
            if (l->cur_prefix != NULL && list_push_prefix(l) != 0)
                xw_fail(w);
        }
    } else if (w->depth == 3 && strcmp(w->names[1], "Contents") == 0) {
        char **slot = NULL;
        if (strcmp(name, "Key") == 0) {
            slot = &l->cur.key;
            l->cur.keylen = len;
        } else if (strcmp(name, "LastModified") == 0) {
            slot = &l->cur.last_modified;
        } else if (strcmp(name, "ETag") == 0) {
            slot = &l->cur.etag;
        } else if (strcmp(name, "Size") == 0) {
            char *e;
            char tmp[32];
            if (len == 0 || len >= sizeof tmp) {
                xw_fail(w);
                return;
            }
            memcpy(tmp, text, len);
            tmp[len] = '\0';
            l->cur.size = strtoll(tmp, &e, 10);
            if (*e != '\0' || l->cur.size < 0)
                xw_fail(w);
            l->cur.has_size = 1;
        }
        if (slot != NULL) {
            free(*slot);
            if ((*slot = dupn(text, len)) == NULL)
                xw_fail(w);
        }
    } else if (w->depth == 3 && strcmp(w->names[1], "CommonPrefixes") == 0 &&
               strcmp(name, "Prefix") == 0) {
        free(l->cur_prefix);
        if ((l->cur_prefix = dupn(text, len)) == NULL)
            xw_fail(w);
        l->cur_prefixlen = len;
    }
}

static int hexval(int c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decode encoding-type=url in place ('+' is a space, as S3 writes it). -1 malformed. */
static int url_decode(char *s, size_t *len) {
    size_t o = 0, n = *len;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            int h, l;
            if (i + 2 >= n)
                return -1;
            h = hexval((unsigned char)s[i + 1]);
            l = hexval((unsigned char)s[i + 2]);
            if (h < 0 || l < 0)
                return -1;
            s[o++] = (char)(h * 16 + l);
            i += 2;
        } else if (s[i] == '+') {
            s[o++] = ' ';
        } else {
            s[o++] = s[i];
        }
    }
    s[o] = '\0';
    *len = o;
    return 0;
}

/* Parse a ListObjectsV2 reply into l (zeroed), keys decoded. 0 ok, -1 malformed. */
static int list_parse(list_out *l, const char *body, size_t len) {
    xw w;
    char root[48];
    memset(&w, 0, sizeof w);
    w.ud = l;
    w.on_end = list_end;
    int ok = xw_parse(&w, body ? body : "", len, root) == 0 &&
             strcmp(w.names[0], "ListBucketResult") == 0 && (!l->truncated || l->next_token != NULL);
    for (size_t i = 0; ok && l->url_encoded && i < l->n; i++)
        ok = url_decode(l->e[i].key, &l->e[i].keylen) == 0;
    for (size_t i = 0; ok && l->url_encoded && i < l->np; i++)
        ok = url_decode(l->prefixes[i], &l->prefixlens[i]) == 0;
    return ok ? 0 : -1;
}

static int opt_string(lua_State *L, int t, const char *field, const char **out) {
    lua_getfield(L, t, field);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "option '%s' must be a string", field);
    *out = lua_tostring(L, -1);
    lua_pop(L, 1); /* anchored by the options table */
    return 1;
}

/* client:list{prefix, start_after, continuation, max, delimiter} ->
 * {keys={{key, size, last_modified, etag}...}, prefixes={...}, truncated, next_continuation} | nil, err
 */
static int s3_list(lua_State *L) {
    s3_client *c = check_client(L);
    const char *prefix = NULL, *start_after = NULL, *token = NULL, *delim = NULL;
    char maxbuf[24];
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        opt_string(L, 2, "prefix", &prefix);
        opt_string(L, 2, "start_after", &start_after);
        opt_string(L, 2, "continuation", &token);
        opt_string(L, 2, "delimiter", &delim);
        lua_getfield(L, 2, "max");
        maxbuf[0] = '\0';
        if (!lua_isnil(L, -1)) {
            lua_Integer m = luaL_checkinteger(L, -1);
            if (m < 1 || m > 1000)
                luaL_error(L, "max must be 1..1000");
            snprintf(maxbuf, sizeof maxbuf, "%d", (int)m);
        }
        lua_pop(L, 1);
    } else {
        maxbuf[0] = '\0';
    }
    s3_batch *b = batch_new(L, 1);
    s3_req *r = &b->reqs[0];
    r->method = "GET";
    r->query[r->nquery++] = (sigv4_kv){"list-type", "2"};
    r->query[r->nquery++] = (sigv4_kv){"encoding-type", "url"};
    if (prefix)
        r->query[r->nquery++] = (sigv4_kv){"prefix", prefix};
    if (start_after)
        r->query[r->nquery++] = (sigv4_kv){"start-after", start_after};
    if (token)
        r->query[r->nquery++] = (sigv4_kv){"continuation-token", token};
    if (delim)
        r->query[r->nquery++] = (sigv4_kv){"delimiter", delim};
    if (maxbuf[0])
        r->query[r->nquery++] = (sigv4_kv){"max-keys", maxbuf};
    run_batch(L, c, b, 1);
    if (!http_ok(r)) {
        int n = fail_req(L, r, "list");
        batch_release(b);
        return n;
    }
    list_out *l = b->list = calloc(1, sizeof *l);
    if (l == NULL) {
        batch_release(b);
        return luaL_error(L, "not enough memory");
    }
    int ok = list_parse(l, r->resp.p, r->resp.n) == 0;
    if (!ok) {
        lua_pushnil(L);
        push_req_error(L, r, "list", "MalformedReply",
                       "ListObjectsV2 reply is not a valid ListBucketResult");
        batch_release(b);
        return 2;
    }
    lua_createtable(L, 0, 4);
    lua_createtable(L, (int)l->n, 0);
    for (size_t i = 0; i < l->n; i++) {
        list_entry *e = &l->e[i];
        lua_createtable(L, 0, 4);
        lua_pushlstring(L, e->key, e->keylen);
        lua_setfield(L, -2, "key");
        if (e->has_size) {
            lua_pushinteger(L, (lua_Integer)e->size);
            lua_setfield(L, -2, "size");
        }
        if (e->last_modified)
            set_str(L, "last_modified", e->last_modified);
        if (e->etag) {
            strip_quotes(L, e->etag);
            lua_setfield(L, -2, "etag");
        }
        lua_rawseti(L, -2, (lua_Integer)(i + 1));
    }
    lua_setfield(L, -2, "keys");
    lua_createtable(L, (int)l->np, 0);
    for (size_t i = 0; i < l->np; i++) {
        lua_pushlstring(L, l->prefixes[i], l->prefixlens[i]);
        lua_rawseti(L, -2, (lua_Integer)(i + 1));
    }
    lua_setfield(L, -2, "prefixes");
    lua_pushboolean(L, l->truncated);
    lua_setfield(L, -2, "truncated");
    if (l->truncated)
        set_str(L, "next_continuation", l->next_token);
    batch_release(b);
    return 1;
}

/* ---------------------------------------------------------------- bucket calls */

/* One bucket-level request: method, optional subresource and body. */
static s3_batch *bucket_call(lua_State *L, s3_client *c, const char *method, const char *sub,
                             const char *body, size_t blen, const char *ctype) {
    s3_batch *b = batch_new(L, 1);
    s3_req *r = &b->reqs[0];
    r->method = method;
    if (sub != NULL) {
        r->query[0] = (sigv4_kv){sub, ""};
        r->nquery = 1;
    }
    if (strcmp(method, "HEAD") == 0)
        r->nobody = 1;
    if (body != NULL) {
        r->content_type = ctype;
        set_body(r, body, blen, 1);
    }
    run_batch(L, c, b, 1);
    return b;
}

/* client:create_bucket() -> true | nil, err (already owned counts as created) */
static int s3_create_bucket(lua_State *L) {
    s3_client *c = check_client(L);
    const char *body = NULL;
    if (strcmp(c->region, "us-east-1") != 0) {
        lua_pushfstring(L,
                        "<CreateBucketConfiguration xmlns=\"" S3_XMLNS "\"><LocationConstraint>%s"
                        "</LocationConstraint></CreateBucketConfiguration>",
                        c->region);
        body = lua_tostring(L, -1);
    }
    s3_batch *b =
        bucket_call(L, c, "PUT", NULL, body, body ? strlen(body) : 0, body ? "application/xml" : NULL);
    const s3_req *r = &b->reqs[0];
    int ok = http_ok(r), n;
    if (!ok && r->local_code == NULL && r->cc == CURLE_OK && r->status == 409) {
        err_body e;
        ok = parse_error_body(r, &e) == 0 && strcmp(e.code, "BucketAlreadyOwnedByYou") == 0;
    }
    if (ok) {
        lua_pushboolean(L, 1);
        n = 1;
    } else {
        n = fail_req(L, r, "create_bucket");
    }
    batch_release(b);
    return n;
}

static int simple_bucket_call(lua_State *L, const char *method, const char *sub, const char *op,
                              int body_arg) {
    s3_client *c = check_client(L);
    size_t blen = 0;
    const char *body = body_arg ? luaL_checklstring(L, body_arg, &blen) : NULL;
    s3_batch *b = bucket_call(L, c, method, sub, body, blen, body ? "application/json" : NULL);
    int n;
    if (http_ok(&b->reqs[0])) {
        lua_pushboolean(L, 1);
        n = 1;
    } else {
        n = fail_req(L, &b->reqs[0], op);
    }
    batch_release(b);
    return n;
}

/* client:delete_bucket() -> true | nil, err (the bucket must be empty) */
static int s3_delete_bucket(lua_State *L) {
    return simple_bucket_call(L, "DELETE", NULL, "delete_bucket", 0);
}

/* client:put_bucket_policy(json) -> true | nil, err */
static int s3_put_bucket_policy(lua_State *L) {
    return simple_bucket_call(L, "PUT", "policy", "put_bucket_policy", 2);
}

/* client:delete_bucket_policy() -> true | nil, err */
static int s3_delete_bucket_policy(lua_State *L) {
    return simple_bucket_call(L, "DELETE", "policy", "delete_bucket_policy", 0);
}

/* ---------------------------------------------------------------- presign */

/* client:presign(method, key, expires, {now=}) -> url | nil, err */
static int s3_presign(lua_State *L) {
    s3_client *c = check_client(L);
    const char *method = luaL_checkstring(L, 2);
    size_t len;
    const char *key = check_key(L, 3, &len);
    lua_Integer expires = luaL_checkinteger(L, 4);
    time_t now = time(NULL);
    for (const char *m = method; *m; m++)
        if (*m < 'A' || *m > 'Z')
            luaL_argerror(L, 2, "an HTTP method in capitals");
    if (*method == '\0')
        luaL_argerror(L, 2, "an HTTP method in capitals");
    if (expires < 1 || expires > 604800)
        luaL_argerror(L, 4, "expires must be 1..604800 seconds");
    if (!lua_isnoneornil(L, 5)) {
        luaL_checktype(L, 5, LUA_TTABLE);
        lua_getfield(L, 5, "now");
        if (!lua_isnil(L, -1))
            now = (time_t)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
    }
    if (len == 0) {
        lua_pushnil(L);
        lua_createtable(L, 0, 5);
        set_str(L, "kind", "s3");
        set_str(L, "op", "presign");
        set_str(L, "code", "EmptyKey");
        set_str(L, "message", "an empty key is refused");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "retryable");
        return 2;
    }
    /* the path and host, as for a request */
    luaL_Buffer pb;
    luaL_buffinit(L, &pb);
    if (c->path_style) {
        luaL_addchar(&pb, '/');
        luaL_addstring(&pb, c->bucket);
    }
    luaL_addchar(&pb, '/');
    luaL_addlstring(&pb, key, len);
    luaL_pushresult(&pb); /* raw path */
    {
        /* encoded with its length, as in req_start: a NUL byte stays in the key */
        size_t plen;
        const char *raw = lua_tolstring(L, -1, &plen);
        char *enc = sigv4_uri_encode(raw, plen, 1);
        if (enc == NULL)
            return luaL_error(L, "not enough memory");
        lua_pushstring(L, enc);
        free(enc);
        lua_remove(L, -2); /* path (encoded) */
    }
    if (c->path_style)
        lua_pushstring(L, c->authority);
    else
        lua_pushfstring(L, "%s.%s", c->bucket, c->authority); /* path host */
    sigv4_kv hdr = {"host", lua_tostring(L, -1)};
    sigv4_request q;
    memset(&q, 0, sizeof q);
    q.method = method;
    q.path = lua_tostring(L, -2);
    q.path_encoded = 1;
    q.headers = &hdr;
    q.nheaders = 1;
    q.payload_hash = "UNSIGNED-PAYLOAD";
    q.access_key = c->access_key;
    q.secret_key = c->secret_key;
    q.session_token = c->session_token;
    q.region = c->region;
    q.service = "s3";
    q.now = now;
    q.s3 = 1;
    q.expires = (long)expires;
    /* the result lives in a userdata whose __gc frees it, so pushing may raise */
    sigv4_result *res = lua_newuserdatauv(L, sizeof *res, 0); /* path host res */
    memset(res, 0, sizeof *res);
    luaL_setmetatable(L, RESULT_MT);
    if (sigv4_sign(&q, res) != 0)
        return luaL_error(L, "not enough memory");
    lua_pushfstring(L, "%s://%s%s?%s", c->https ? "https" : "http", hdr.value, res->encoded_path,
                    res->query);
    sigv4_result_free(res);
    return 1;
}

/* ---------------------------------------------------------------- s3.client */

/* client:stats() -> {requests, retries, connections}: attempts sent, of which retries, and
 * the connections opened for them (connection reuse shows as connections << requests). */
static int s3_stats(lua_State *L) {
    s3_client *c = check_client(L);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, c->n_requests);
    lua_setfield(L, -2, "requests");
    lua_pushinteger(L, c->n_retries);
    lua_setfield(L, -2, "retries");
    lua_pushinteger(L, c->n_connects);
    lua_setfield(L, -2, "connections");
    return 1;
}

static const char *const client_fields[] = {"endpoint",
                                            "region",
                                            "access_key",
                                            "secret_key",
                                            "session_token",
                                            "bucket",
                                            "path_style",
                                            "connect_timeout",
                                            "timeout",
                                            "ca_file",
                                            "verify_tls",
                                            "max_attempts",
                                            "retry_max_seconds",
                                            "retry_base_seconds",
                                            "concurrency",
                                            "trace",
                                            NULL};

static char *opt_dup(lua_State *L, const char *field, int required) {
    lua_getfield(L, 1, field);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        if (required)
            luaL_error(L, "s3.client: '%s' is required", field);
        return NULL;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "s3.client: '%s' must be a string", field);
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    if (n == 0 && required)
        luaL_error(L, "s3.client: '%s' must not be empty", field);
    char *p = dupn(s, n);
    lua_pop(L, 1);
    if (p == NULL)
        luaL_error(L, "not enough memory");
    return p;
}

static double opt_num(lua_State *L, const char *field, double def, double lo, double hi) {
    lua_getfield(L, 1, field);
    double v = def;
    if (!lua_isnil(L, -1)) {
        if (!lua_isnumber(L, -1))
            luaL_error(L, "s3.client: '%s' must be a number", field);
        v = lua_tonumber(L, -1);
        if (!(v >= lo && v <= hi))
            luaL_error(L, "s3.client: '%s' must be in %f..%f", field, lo, hi);
    }
    lua_pop(L, 1);
    return v;
}

static int opt_bool(lua_State *L, const char *field, int def) {
    lua_getfield(L, 1, field);
    int v = def;
    if (!lua_isnil(L, -1)) {
        if (!lua_isboolean(L, -1))
            luaL_error(L, "s3.client: '%s' must be a boolean", field);
        v = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    return v;
}

/* "http(s)://host[:port][/]" -> https flag and the Host value (lower case, default port dropped). */
static void parse_endpoint(lua_State *L, s3_client *c, const char *ep) {
    const char *a;
    if (strncasecmp(ep, "https://", 8) == 0) {
        c->https = 1;
        a = ep + 8;
    } else if (strncasecmp(ep, "http://", 7) == 0) {
        a = ep + 7;
    } else {
        luaL_error(L, "s3.client: endpoint must start with http:// or https://");
        return;
    }
    size_t n = strcspn(a, "/?#");
    if (a[n] != '\0' && strcmp(a + n, "/") != 0)
        luaL_error(L, "s3.client: endpoint must be scheme://host[:port] without a path or query");
    if (n == 0)
        luaL_error(L, "s3.client: endpoint has no host");
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)a[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              strchr(".-_:[]", ch)))
            luaL_error(L, "s3.client: endpoint host has an invalid character");
    }
    if ((c->https && n > 4 && strncmp(a + n - 4, ":443", 4) == 0) ||
        (!c->https && n > 3 && strncmp(a + n - 3, ":80", 3) == 0 && a[n - 4] != ':'))
        n -= c->https ? 4 : 3;
    c->authority = dupn(a, n);
    if (c->authority == NULL)
        luaL_error(L, "not enough memory");
    for (char *p = c->authority; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
}

/* s3.client{endpoint, region, access_key, secret_key, session_token, bucket, path_style,
 * connect_timeout, timeout, ca_file, verify_tls, max_attempts, retry_max_seconds,
 * retry_base_seconds, concurrency, trace} -> client */
static int s3_client_new(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    /* unknown fields are typos: refuse them */
    lua_pushnil(L);
    while (lua_next(L, 1) != 0) {
        lua_pop(L, 1);
        int known = 0;
        if (lua_type(L, -1) == LUA_TSTRING)
            for (const char *const *f = client_fields; *f && !known; f++)
                known = strcmp(*f, lua_tostring(L, -1)) == 0;
        if (!known)
            luaL_error(L, "s3.client: unknown option '%s'", luaL_tolstring(L, -1, NULL));
    }
    lua_getfield(L, 1, "trace");
    if (!lua_isnil(L, -1) && !lua_isfunction(L, -1))
        luaL_error(L, "s3.client: 'trace' must be a function");
    /* 1 opts 2 trace */
    s3_client *c = lua_newuserdatauv(L, sizeof *c, 1); /* opts trace client */
    memset(c, 0, sizeof *c);
    c->closed = 1; /* until everything is in place: __gc frees what is there */
    luaL_setmetatable(L, CLIENT_MT);
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, -2, 1);

    lua_getfield(L, 1, "endpoint"); /* opts trace client endpoint */
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "s3.client: 'endpoint' is required (a string)");
    parse_endpoint(L, c, lua_tostring(L, -1));
    lua_pop(L, 1);
    c->region = opt_dup(L, "region", 0);
    if (c->region == NULL && (c->region = dupn("us-east-1", 9)) == NULL)
        luaL_error(L, "not enough memory");
    c->access_key = opt_dup(L, "access_key", 1);
    c->secret_key = opt_dup(L, "secret_key", 1);
    c->session_token = opt_dup(L, "session_token", 0);
    c->bucket = opt_dup(L, "bucket", 1);
    if (strchr(c->bucket, '/') != NULL)
        luaL_error(L, "s3.client: 'bucket' must not contain '/'");
    c->ca_file = opt_dup(L, "ca_file", 0);
    c->path_style = opt_bool(L, "path_style", 1);
    c->verify_tls = opt_bool(L, "verify_tls", 1);
    c->connect_timeout_ms = (long)(opt_num(L, "connect_timeout", 5, 0.001, 3600) * 1000);
    c->timeout_ms = (long)(opt_num(L, "timeout", 30, 0.001, 86400) * 1000);
    c->max_attempts = (int)opt_num(L, "max_attempts", 4, 1, 100);
    c->retry_max_seconds = opt_num(L, "retry_max_seconds", 20, 0, 3600);
    c->retry_base_seconds = opt_num(L, "retry_base_seconds", 0.1, 0, 60);
    c->concurrency = (int)opt_num(L, "concurrency", 16, 1, MAX_CONCURRENCY);
    c->multi = curl_multi_init();
    if (c->multi == NULL)
        luaL_error(L, "s3.client: cannot create a curl multi handle");
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, (long)MAX_CONCURRENCY);
    c->timer_at = -1.0;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, (void *)c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, (void *)c);
    c->closed = 0;
    return 1;
}

static int result_gc(lua_State *L) {
    sigv4_result_free(luaL_checkudata(L, 1, RESULT_MT));
    return 0;
}

static const luaL_Reg client_methods[] = {{"close", client_close},
                                          {"create_bucket", s3_create_bucket},
                                          {"delete", s3_delete},
                                          {"delete_bucket", s3_delete_bucket},
                                          {"delete_bucket_policy", s3_delete_bucket_policy},
                                          {"delete_many", s3_delete_many},
                                          {"get", s3_get},
                                          {"head", s3_head},
                                          {"head_bucket", s3_head_bucket},
                                          {"head_many", s3_head_many},
                                          {"list", s3_list},
                                          {"presign", s3_presign},
                                          {"put", s3_put},
                                          {"put_bucket_policy", s3_put_bucket_policy},
                                          {"stats", s3_stats},
                                          {NULL, NULL}};

static const luaL_Reg client_meta[] = {
    {"__close", client_close}, {"__gc", client_close}, {"__tostring", client_tostring}, {NULL, NULL}};

static const luaL_Reg s3_funcs[] = {{"client", s3_client_new}, {NULL, NULL}};

int luaopen_resclean_s3(lua_State *L) {
    if (luaL_newmetatable(L, CLIENT_MT)) {
        luaL_setfuncs(L, client_meta, 0);
        luaL_newlib(L, client_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, BATCH_MT)) {
        lua_pushcfunction(L, batch_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, RESULT_MT)) {
        lua_pushcfunction(L, result_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    luaL_newlib(L, s3_funcs);
    lua_pushliteral(L, "libcurl, expat, OpenSSL");
    lua_setfield(L, -2, "_BACKEND");
    return 1;
}
