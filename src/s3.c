/*
 * resclean.s3: signed S3 calls (MinIO, AWS, Ceph RGW), the Lua binding.
 *
 * The work is done by three units without Lua: http.c (the transport over curl multi: one
 * connection pool per client, bounded concurrency, retries), s3req.c (an S3 request, signed
 * with sigv4.c for each attempt) and s3xml.c (the XML replies). This file checks arguments,
 * builds a call's requests, runs them, and turns the outcome into Lua values.
 *
 * Memory: the requests of one call live in a "batch" userdata whose __gc frees them, and
 * no easy handle stays attached to the multi handle when a call returns, so an error raised
 * at any point (out of memory, a failing trace hook) leaks nothing.
 * Misuse raises; the world failing returns nil, err (luax.h: {kind="s3", code, message,
 * status, ...} with a __tostring): facts, which resclean.errors classifies.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include <lauxlib.h>
#include <lua.h>

#include "http.h"
#include "luax.h"
#include "resclean.h"
#include "s3req.h"
#include "s3_internal.h"
#include "s3xml.h"

#define REDACTED "<redacted>"

/* ---------------------------------------------------------------- client */

static void client_release(s3_client *c) {
    http_client_free(&c->http);
    s3_target_free(&c->target);
    c->closed = 1;
}

s3_client *s3_check_client(lua_State *L) {
    s3_client *c = luaL_checkudata(L, 1, CLIENT_MT);
    if (c->closed)
        luaL_error(L, "attempt to use a closed s3 client");
    if (c->busy)
        luaL_error(L,
                   "s3 client is busy (a delete_start not finished, or called from its own trace hook)");
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
        lua_pushfstring(L, "resclean.s3.client (%s://%s, bucket %s)", c->target.https ? "https" : "http",
                        c->target.authority, c->target.bucket);
    return 1;
}

/* ---------------------------------------------------------------- batches */

/* Free everything a batch owns; idempotent. Its easy handles are never attached to a
 * multi handle here (http_run() detaches them before returning). */
void s3_batch_release(s3_batch *b) {
    for (size_t i = 0; b->reqs != NULL && i < b->nreq; i++)
        s3req_free(&b->reqs[i]);
    free(b->reqs);
    free(b->hreqs);
    http_batch_free(&b->run);
    free(b->keys);
    free(b->arena);
    s3xml_list_free(b->list);
    buf_free(&b->scratch);
    b->reqs = NULL;
    b->hreqs = NULL;
    b->keys = NULL;
    b->arena = NULL;
    b->list = NULL;
    b->nreq = b->nkeys = 0;
}

static int batch_gc(lua_State *L) {
    s3_batch_release(luaL_checkudata(L, 1, BATCH_MT));
    return 0;
}

/* Push a new batch of nreq requests (GETs of the bucket until set); raises on out of memory
 * (the batch frees). */
s3_batch *s3_batch_new(lua_State *L, size_t nreq) {
    s3_batch *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    luaL_setmetatable(L, BATCH_MT);
    if (nreq > 0) {
        b->reqs = calloc(nreq, sizeof *b->reqs);
        b->hreqs = calloc(nreq, sizeof *b->hreqs);
        if (b->reqs == NULL || b->hreqs == NULL)
            luaL_error(L, "not enough memory");
        b->nreq = nreq;
        for (size_t i = 0; i < nreq; i++) {
            s3req_init(&b->reqs[i], "GET", NULL, 0);
            b->hreqs[i] = &b->reqs[i].http;
        }
    }
    return b;
}

/* ---------------------------------------------------------------- sending */

typedef struct trace_args {
    const s3_req *r;
    const s3_signed *sg;
} trace_args;

/* Protected: lightuserdata(args) fn. Calls fn(method, url, headers, body, attempt), secrets
 * redacted. */
static int trace_call(lua_State *L) {
    const trace_args *t = lua_touserdata(L, 1);
    const http_req *h = &t->r->http;
    const s3_signed *sg = t->sg;
    lua_pushvalue(L, 2);
    lua_pushstring(L, h->method);
    lua_pushstring(L, h->url);
    lua_createtable(L, 0, (int)sg->nh + 1);
    for (size_t i = 0; i < sg->nh; i++) {
        const char *v = sg->hdrs[i].value;
        if (strcmp(sg->hdrs[i].name, "x-amz-security-token") == 0)
            v = REDACTED;
        luax_setstr(L, sg->hdrs[i].name, v);
    }
    lua_pushfstring(L, "AWS4-HMAC-SHA256 Credential=" REDACTED ", SignedHeaders=%s, Signature=" REDACTED,
                    sg->res.signed_headers ? sg->res.signed_headers : "");
    lua_setfield(L, -2, "authorization");
    if (h->body != NULL)
        lua_pushlstring(L, h->body, h->bodylen);
    else
        lua_pushnil(L);
    lua_pushinteger(L, h->attempts);
    lua_call(L, 5, 0);
    return 0;
}

/* http_start_fn: sign the attempt, then show it to the trace function. A trace that raises
 * stops the call; its error is left on the stack top. */
static int start_hook(void *ud, http_req *h) {
    s3_call *k = ud;
    s3_req *r = (s3_req *)h; /* h is the first member of an s3_req */
    s3_signed sg;
    int rc = s3req_sign(&k->c->target, r, time(NULL), &sg) == 0 ? HTTP_OK : HTTP_NOMEM;
    if (rc == HTTP_OK && k->trace != 0) {
        trace_args t = {r, &sg};
        lua_pushcfunction(k->L, trace_call);
        lua_pushlightuserdata(k->L, &t);
        lua_pushvalue(k->L, k->trace);
        if (lua_pcall(k->L, 2, 0, 0) != LUA_OK)
            rc = HTTP_HOOK_ERROR;
    }
    s3req_signed_free(&sg);
    return rc;
}

/* Hand the batch's requests to the transport: at most conc at once, each attempt signed
 * (and traced) through k. */
void s3_batch_bind(s3_batch *b, int conc, s3_call *k) {
    b->run.reqs = b->hreqs;
    b->run.n = b->nreq;
    b->run.conc = conc;
    b->run.start = start_hook;
    b->run.ud = k;
}

/* Raise for a transport result rc other than HTTP_OK (a hook's error is on the stack top). */
void s3_raise_transport(lua_State *L, int rc) {
    if (rc == HTTP_HOOK_ERROR)
        lua_error(L);
    luaL_error(L, rc == HTTP_NOMEM ? "not enough memory" : "s3: libcurl's multi interface failed");
}

/* Run the batch, at most conc requests at once; raise (after freeing it) when it could not
 * finish. */
void s3_run_batch(lua_State *L, s3_client *c, s3_batch *b, int conc) {
    s3_call k = {L, c, 0};
    luaL_checkstack(L, 10, NULL);
    lua_getiuservalue(L, 1, 1); /* ... trace */
    if (lua_isfunction(L, -1))
        k.trace = lua_gettop(L);
    s3_batch_bind(b, conc, &k);
    c->busy = 1;
    int rc = http_run(&c->http, &b->run);
    c->busy = 0;
    if (rc != HTTP_OK) {
        s3_batch_release(b);
        s3_raise_transport(L, rc);
    }
    if (k.trace == 0)
        lua_pop(L, 1);
    else
        lua_remove(L, k.trace);
}

/* ---------------------------------------------------------------- errors */

/* S3's code for an HTTP status without an error document. */
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

/* What went wrong with a request that got an answer: code, message, request id. */
typedef struct answer_error {
    s3xml_error e;
    char codebuf[32];
    const char *code, *msg, *request_id;
} answer_error;

static void read_answer_error(const http_req *h, answer_error *a) {
    if (s3xml_parse_error(h->resp.p, h->resp.len, &a->e) == 0) {
        a->code = a->e.code;
        a->msg = a->e.message[0] ? a->e.message : a->e.code;
    } else {
        a->code = status_code(h->status);
        if (a->code == NULL) {
            snprintf(a->codebuf, sizeof a->codebuf, "HTTP%ld", h->status);
            a->code = a->codebuf;
        }
        a->msg = h->resp.len > 0 ? "HTTP error with a reply that is not an S3 error document"
                                 : "HTTP error without a reply body";
    }
    a->request_id = a->e.request_id[0] != '\0' ? a->e.request_id : h->h_id;
}

/* The server's clock, from the reply's Date header (RFC 9110: every origin server with a clock
 * sends it), as server_time (Unix seconds) in the table on top; nothing without one. */
static void set_server_time(lua_State *L, const http_req *h) {
    if (h->h_date == NULL)
        return;
    time_t t = curl_getdate(h->h_date, NULL);
    if (t == (time_t)-1)
        return;
    lua_pushinteger(L, (lua_Integer)t);
    lua_setfield(L, -2, "server_time");
}

/* Push the error table of a request that failed: refused, no answer, or an HTTP error. The
 * overrides (NULL: none) replace the code and message. */
void s3_push_req_error(lua_State *L, const s3_req *r, const char *op, const char *code_override,
                       const char *msg_override) {
    const http_req *h = &r->http;
    answer_error a;
    memset(&a, 0, sizeof a);
    int answered = 0;
    if (r->local_code != NULL) {
        a.code = r->local_code;
        a.msg = EMPTY_KEY_MSG;
    } else if (h->cc != CURLE_OK) {
        a.code = http_error_code(h);
        a.msg = http_error_message(h);
    } else {
        read_answer_error(h, &a);
        answered = 1;
    }
    luax_newerror(L, "s3", code_override ? code_override : a.code);
    luax_setstr(L, "message", msg_override ? msg_override : a.msg);
    luax_setstr(L, "op", op);
    luax_setlstr(L, "key", r->key, r->keylen);
    if (answered) {
        lua_pushinteger(L, h->status);
        lua_setfield(L, -2, "status");
        luax_setstr(L, "request_id", a.request_id);
        set_server_time(L, h);
    }
    lua_pushinteger(L, h->attempts);
    lua_setfield(L, -2, "attempts");
}

/* nil, err for a failed request; returns 2. */
static int fail_req(lua_State *L, const s3_req *r, const char *op) {
    lua_pushnil(L);
    s3_push_req_error(L, r, op, NULL, NULL);
    return 2;
}

int s3_req_ok(const s3_req *r) {
    return r->local_code == NULL && http_ok(&r->http);
}

/* An answered request whose error document carries code. */
static int answered_with(const s3_req *r, long status, const char *code) {
    s3xml_error e;
    return r->local_code == NULL && r->http.cc == CURLE_OK && r->http.status == status &&
           s3xml_parse_error(r->http.resp.p, r->http.resp.len, &e) == 0 && strcmp(e.code, code) == 0;
}

/* true, or nil, err; frees the batch. */
static int true_or_fail(lua_State *L, s3_batch *b, int ok, const char *op) {
    int n = 1;
    if (ok)
        lua_pushboolean(L, 1);
    else
        n = fail_req(L, &b->reqs[0], op);
    s3_batch_release(b);
    return n;
}

/* ---------------------------------------------------------------- arguments */

static void strip_quotes(lua_State *L, const char *s) {
    size_t n = strlen(s);
    if (n >= 2 && s[0] == '"' && s[n - 1] == '"')
        lua_pushlstring(L, s + 1, n - 2);
    else
        lua_pushstring(L, s);
}

int s3_opt_concurrency(lua_State *L, int idx, s3_client *c) {
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
size_t s3_check_keys(lua_State *L, int idx, size_t *total) {
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
void s3_copy_keys(lua_State *L, int idx, s3_batch *b, size_t n, size_t total) {
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
    const http_req *h = &r->http;
    lua_createtable(L, 0, 7);
    lua_pushboolean(L, h->status != 404);
    lua_setfield(L, -2, "exists");
    set_server_time(L, h);
    if (h->status / 100 != 2)
        return;
    if (h->has_len) {
        lua_pushinteger(L, (lua_Integer)h->h_len);
        lua_setfield(L, -2, "size");
    }
    if (h->h_etag != NULL) {
        strip_quotes(L, h->h_etag);
        lua_setfield(L, -2, "etag");
    }
    if (h->h_lastmod != NULL) {
        luax_setstr(L, "last_modified", h->h_lastmod);
        time_t t = curl_getdate(h->h_lastmod, NULL);
        if (t != (time_t)-1) {
            lua_pushinteger(L, (lua_Integer)t);
            lua_setfield(L, -2, "mtime");
        }
    }
}

static int head_ok(const s3_req *r) {
    return r->local_code == NULL && r->http.cc == CURLE_OK &&
           (r->http.status / 100 == 2 || r->http.status == 404);
}

/* client:head(key) -> {exists, size, etag, last_modified, mtime} | nil, err */
static int s3_head(lua_State *L) {
    s3_client *c = s3_check_client(L);
    size_t len;
    const char *key = luaL_checklstring(L, 2, &len);
    s3_batch *b = s3_batch_new(L, 1);
    s3req_init(&b->reqs[0], "HEAD", key, len);
    s3_run_batch(L, c, b, 1);
    const s3_req *r = &b->reqs[0];
    int n = 1;
    if (head_ok(r))
        push_head_result(L, r);
    else
        n = fail_req(L, r, "head");
    s3_batch_release(b);
    return n;
}

/* client:head_many(keys, {concurrency=N}) -> results, nfailed; results[i] is
 * {key, exists, size, etag, last_modified, mtime} or {key, err} */
static int s3_head_many(lua_State *L) {
    s3_client *c = s3_check_client(L);
    size_t total, n = s3_check_keys(L, 2, &total);
    int conc = s3_opt_concurrency(L, 3, c);
    s3_batch *b = s3_batch_new(L, n);
    s3_copy_keys(L, 2, b, n, total);
    for (size_t i = 0; i < n; i++)
        s3req_init(&b->reqs[i], "HEAD", b->keys[i].s, b->keys[i].len);
    s3_run_batch(L, c, b, conc);
    lua_Integer failed = 0;
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        const s3_req *r = &b->reqs[i];
        if (head_ok(r)) {
            push_head_result(L, r);
        } else {
            lua_createtable(L, 0, 2);
            s3_push_req_error(L, r, "head", NULL, NULL);
            lua_setfield(L, -2, "err");
            failed++;
        }
        luax_setlstr(L, "key", r->key, r->keylen);
        lua_rawseti(L, -2, (lua_Integer)(i + 1));
    }
    lua_pushinteger(L, failed);
    s3_batch_release(b);
    return 2;
}

/* client:head_bucket() -> true | nil, err */
static int s3_head_bucket(lua_State *L) {
    s3_client *c = s3_check_client(L);
    s3_batch *b = s3_batch_new(L, 1);
    s3req_init(&b->reqs[0], "HEAD", NULL, 0);
    s3_run_batch(L, c, b, 1);
    return true_or_fail(L, b, s3_req_ok(&b->reqs[0]), "head_bucket");
}

/* ---------------------------------------------------------------- get, put, delete */

/* client:get(key) -> body, {size, etag, last_modified, content_type} | nil, err */
static int s3_get(lua_State *L) {
    s3_client *c = s3_check_client(L);
    size_t len;
    const char *key = luaL_checklstring(L, 2, &len);
    s3_batch *b = s3_batch_new(L, 1);
    s3_req *r = &b->reqs[0];
    s3req_init(r, "GET", key, len);
    s3_run_batch(L, c, b, 1);
    const http_req *h = &r->http;
    int n = 2;
    if (s3_req_ok(r)) {
        lua_pushlstring(L, h->resp.p ? h->resp.p : "", h->resp.len);
        lua_createtable(L, 0, 4);
        lua_pushinteger(L, (lua_Integer)h->resp.len);
        lua_setfield(L, -2, "size");
        if (h->h_etag) {
            strip_quotes(L, h->h_etag);
            lua_setfield(L, -2, "etag");
        }
        luax_setstr(L, "last_modified", h->h_lastmod);
        luax_setstr(L, "content_type", h->h_ctype);
    } else {
        n = fail_req(L, r, "get");
    }
    s3_batch_release(b);
    return n;
}

/* The content_type option of put: a header value, so CR, LF or NUL (which would end it and
 * start another header) is refused. */
static const char *opt_content_type(lua_State *L, int idx) {
    const char *ctype = "application/octet-stream";
    if (lua_isnoneornil(L, idx))
        return ctype;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_getfield(L, idx, "content_type");
    if (!lua_isnil(L, -1)) {
        size_t clen;
        ctype = luaL_checklstring(L, -1, &clen);
        if (strcspn(ctype, "\r\n") != clen)
            luaL_argerror(L, idx, "content_type must not contain CR, LF or NUL");
    }
    lua_pop(L, 1); /* still anchored by the options table for this call */
    return ctype;
}

/* client:put(key, body, {content_type=}) -> {etag} | nil, err */
static int s3_put(lua_State *L) {
    s3_client *c = s3_check_client(L);
    size_t len, blen;
    const char *key = luaL_checklstring(L, 2, &len);
    const char *body = luaL_checklstring(L, 3, &blen);
    const char *ctype = opt_content_type(L, 4);
    s3_batch *b = s3_batch_new(L, 1);
    s3_req *r = &b->reqs[0];
    s3req_init(r, "PUT", key, len);
    r->content_type = ctype;
    s3req_set_body(r, body, blen, 1);
    s3_run_batch(L, c, b, 1);
    int n = 1;
    if (s3_req_ok(r)) {
        lua_createtable(L, 0, 1);
        if (r->http.h_etag) {
            strip_quotes(L, r->http.h_etag);
            lua_setfield(L, -2, "etag");
        }
    } else {
        n = fail_req(L, r, "put");
    }
    s3_batch_release(b);
    return n;
}

/* DELETE of a missing key is 204 on S3; a 404 NoSuchKey (some servers) means gone too. */
int s3_delete_ok(const s3_req *r) {
    return s3_req_ok(r) || answered_with(r, 404, "NoSuchKey");
}

/* client:delete(key) -> true | nil, err */
static int s3_delete(lua_State *L) {
    s3_client *c = s3_check_client(L);
    size_t len;
    const char *key = luaL_checklstring(L, 2, &len);
    s3_batch *b = s3_batch_new(L, 1);
    s3req_init(&b->reqs[0], "DELETE", key, len);
    s3_run_batch(L, c, b, 1);
    return true_or_fail(L, b, s3_delete_ok(&b->reqs[0]), "delete");
}

/* ---------------------------------------------------------------- list */

static void opt_string(lua_State *L, int t, const char *field, const char **out) {
    lua_getfield(L, t, field);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "option '%s' must be a string", field);
    *out = lua_tostring(L, -1);
    lua_pop(L, 1); /* anchored by the options table */
}

/* The ListObjectsV2 query of list's options (strings anchored by the options table). */
static void list_query(lua_State *L, s3_req *r, char maxbuf[24]) {
    const char *prefix = NULL, *start_after = NULL, *token = NULL, *delim = NULL;
    maxbuf[0] = '\0';
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        opt_string(L, 2, "prefix", &prefix);
        opt_string(L, 2, "start_after", &start_after);
        opt_string(L, 2, "continuation", &token);
        opt_string(L, 2, "delimiter", &delim);
        lua_getfield(L, 2, "max");
        if (!lua_isnil(L, -1)) {
            lua_Integer m = luaL_checkinteger(L, -1);
            if (m < 1 || m > 1000)
                luaL_error(L, "max must be 1..1000");
            snprintf(maxbuf, 24, "%d", (int)m);
        }
        lua_pop(L, 1);
    }
    const sigv4_kv q[] = {{"list-type", "2"},
                          {"encoding-type", "url"},
                          {"prefix", prefix},
                          {"start-after", start_after},
                          {"continuation-token", token},
                          {"delimiter", delim},
                          {"max-keys", maxbuf[0] ? maxbuf : NULL}};
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++)
        if (q[i].value != NULL)
            r->query[r->nquery++] = q[i];
}

static void push_listing(lua_State *L, const s3xml_list *l) {
    lua_createtable(L, 0, 4);
    lua_createtable(L, (int)l->n, 0);
    for (size_t i = 0; i < l->n; i++) {
        const s3xml_entry *e = &l->e[i];
        lua_createtable(L, 0, 4);
        luax_setlstr(L, "key", e->key, e->keylen);
        if (e->has_size) {
            lua_pushinteger(L, (lua_Integer)e->size);
            lua_setfield(L, -2, "size");
        }
        luax_setstr(L, "last_modified", e->last_modified);
        if (e->has_mtime) {
            lua_pushnumber(L, (lua_Number)e->mtime);
            lua_setfield(L, -2, "mtime");
        }
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
        luax_setstr(L, "next_continuation", l->next_token);
}

/* client:list{prefix, start_after, continuation, max, delimiter} ->
 * {keys={{key, size, last_modified, etag}...}, prefixes={...}, truncated, next_continuation} | nil, err
 */
static int s3_list(lua_State *L) {
    s3_client *c = s3_check_client(L);
    char maxbuf[24];
    s3_batch *b = s3_batch_new(L, 1);
    s3_req *r = &b->reqs[0];
    list_query(L, r, maxbuf);
    s3_run_batch(L, c, b, 1);
    int n = 1;
    if (!s3_req_ok(r)) {
        n = fail_req(L, r, "list");
    } else if ((b->list = calloc(1, sizeof *b->list)) == NULL) {
        s3_batch_release(b);
        return luaL_error(L, "not enough memory");
    } else if (s3xml_list_parse(b->list, r->http.resp.p, r->http.resp.len) != 0) {
        lua_pushnil(L);
        s3_push_req_error(L, r, "list", "MalformedReply",
                          "ListObjectsV2 reply is not a valid ListBucketResult");
        n = 2;
    } else {
        push_listing(L, b->list);
    }
    s3_batch_release(b);
    return n;
}

/* ---------------------------------------------------------------- bucket calls */

/* One bucket-level request: method, optional subresource and body. */
static s3_batch *bucket_call(lua_State *L, s3_client *c, const char *method, const char *sub,
                             const char *body, size_t blen, const char *ctype) {
    s3_batch *b = s3_batch_new(L, 1);
    s3_req *r = &b->reqs[0];
    s3req_init(r, method, NULL, 0);
    if (sub != NULL) {
        r->query[0] = (sigv4_kv){sub, ""};
        r->nquery = 1;
    }
    if (body != NULL) {
        r->content_type = ctype;
        s3req_set_body(r, body, blen, 1);
    }
    s3_run_batch(L, c, b, 1);
    return b;
}

/* client:create_bucket() -> true | nil, err (already owned counts as created) */
static int s3_create_bucket(lua_State *L) {
    s3_client *c = s3_check_client(L);
    const char *body = NULL;
    if (strcmp(c->target.region, "us-east-1") != 0) {
        lua_pushfstring(L,
                        "<CreateBucketConfiguration xmlns=\"" S3XML_NS "\"><LocationConstraint>%s"
                        "</LocationConstraint></CreateBucketConfiguration>",
                        c->target.region);
        body = lua_tostring(L, -1);
    }
    s3_batch *b =
        bucket_call(L, c, "PUT", NULL, body, body ? strlen(body) : 0, body ? "application/xml" : NULL);
    const s3_req *r = &b->reqs[0];
    return true_or_fail(L, b, s3_req_ok(r) || answered_with(r, 409, "BucketAlreadyOwnedByYou"),
                        "create_bucket");
}

static int simple_bucket_call(lua_State *L, const char *method, const char *sub, const char *op,
                              int body_arg) {
    s3_client *c = s3_check_client(L);
    size_t blen = 0;
    const char *body = body_arg ? luaL_checklstring(L, body_arg, &blen) : NULL;
    s3_batch *b = bucket_call(L, c, method, sub, body, blen, body ? "application/json" : NULL);
    return true_or_fail(L, b, s3_req_ok(&b->reqs[0]), op);
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
    s3_client *c = s3_check_client(L);
    const char *method = luaL_checkstring(L, 2);
    size_t len;
    const char *key = luaL_checklstring(L, 3, &len);
    lua_Integer expires = luaL_checkinteger(L, 4);
    time_t now = time(NULL);
    for (const char *m = method; *m; m++)
        if (*m < 'A' || *m > 'Z')
            luaL_argerror(L, 2, "an HTTP method in capitals");
    if (*method == '\0')
        luaL_argerror(L, 2, "an HTTP method in capitals");
    if (expires < 1 || expires > SIGV4_MAX_EXPIRES)
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
        luax_newerror(L, "s3", "EmptyKey");
        luax_setstr(L, "message", "an empty key is refused");
        luax_setstr(L, "op", "presign");
        return 2;
    }
    s3_batch *b = s3_batch_new(L, 0); /* owns the URL while it is pushed */
    if (s3req_presign(&c->target, method, key, len, (long)expires, now, &b->scratch) != 0) {
        s3_batch_release(b);
        return luaL_error(L, "not enough memory");
    }
    lua_pushlstring(L, b->scratch.p, b->scratch.len);
    s3_batch_release(b);
    return 1;
}

/* ---------------------------------------------------------------- s3.client */

/* client:stats() -> {requests, retries, connections}: attempts sent, of which retries, and
 * the connections opened for them (connection reuse shows as connections << requests). */
static int s3_stats(lua_State *L) {
    s3_client *c = s3_check_client(L);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, (lua_Integer)c->http.n_requests);
    lua_setfield(L, -2, "requests");
    lua_pushinteger(L, (lua_Integer)c->http.n_retries);
    lua_setfield(L, -2, "retries");
    lua_pushinteger(L, (lua_Integer)c->http.n_connects);
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
    char *p = buf_dupn(s, n);
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
static void parse_endpoint(lua_State *L, s3_target *t, const char *ep) {
    const char *a;
    if (strncasecmp(ep, "https://", 8) == 0) {
        t->https = 1;
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
    if ((t->https && n > 4 && strncmp(a + n - 4, ":443", 4) == 0) ||
        (!t->https && n > 3 && strncmp(a + n - 3, ":80", 3) == 0 && a[n - 4] != ':'))
        n -= t->https ? 4 : 3;
    if ((t->authority = buf_dupn(a, n)) == NULL)
        luaL_error(L, "not enough memory");
    for (char *p = t->authority; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
}

/* Unknown fields are typos: refuse them. A trace must be a function. */
static void check_client_fields(lua_State *L) {
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
}

/* Where to and as whom (table at 1). */
static void read_target(lua_State *L, s3_target *t) {
    lua_getfield(L, 1, "endpoint");
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "s3.client: 'endpoint' is required (a string)");
    parse_endpoint(L, t, lua_tostring(L, -1));
    lua_pop(L, 1);
    t->region = opt_dup(L, "region", 0);
    if (t->region == NULL && (t->region = buf_dupn("us-east-1", 9)) == NULL)
        luaL_error(L, "not enough memory");
    t->access_key = opt_dup(L, "access_key", 1);
    t->secret_key = opt_dup(L, "secret_key", 1);
    t->session_token = opt_dup(L, "session_token", 0);
    t->bucket = opt_dup(L, "bucket", 1);
    if (strchr(t->bucket, '/') != NULL)
        luaL_error(L, "s3.client: 'bucket' must not contain '/'");
    t->path_style = opt_bool(L, "path_style", 1);
}

/* How requests are sent (table at 1). */
static void read_transport(lua_State *L, http_client *h) {
    h->ca_file = opt_dup(L, "ca_file", 0);
    h->verify_tls = opt_bool(L, "verify_tls", 1);
    h->connect_timeout_ms = (long)(opt_num(L, "connect_timeout", 5, 0.001, 3600) * 1000);
    h->timeout_ms = (long)(opt_num(L, "timeout", 30, 0.001, 86400) * 1000);
    h->max_attempts = (int)opt_num(L, "max_attempts", 4, 1, 100);
    h->retry_max_seconds = opt_num(L, "retry_max_seconds", 20, 0, 3600);
    h->retry_base_seconds = opt_num(L, "retry_base_seconds", 0.1, 0, 60);
    h->id_header = "x-amz-request-id"; /* each reply's id, for errors (request_id) */
}

/* s3.client{endpoint, region, access_key, secret_key, session_token, bucket, path_style,
 * connect_timeout, timeout, ca_file, verify_tls, max_attempts, retry_max_seconds,
 * retry_base_seconds, concurrency, trace} -> client */
static int s3_client_new(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    check_client_fields(L);                            /* opts trace */
    s3_client *c = lua_newuserdatauv(L, sizeof *c, 1); /* opts trace client */
    memset(c, 0, sizeof *c);
    c->closed = 1; /* until everything is in place: __gc frees what is there */
    luaL_setmetatable(L, CLIENT_MT);
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, -2, 1);
    read_target(L, &c->target);
    read_transport(L, &c->http);
    c->concurrency = (int)opt_num(L, "concurrency", 16, 1, MAX_CONCURRENCY);
    if (http_client_init(&c->http) != 0)
        luaL_error(L, "s3.client: cannot create a curl multi handle");
    c->closed = 0;
    return 1;
}

static const luaL_Reg client_methods[] = {{"close", client_close},
                                          {"create_bucket", s3_create_bucket},
                                          {"delete", s3_delete},
                                          {"delete_bucket", s3_delete_bucket},
                                          {"delete_bucket_policy", s3_delete_bucket_policy},
                                          {"delete_many", s3_delete_many},
                                          {"delete_start", s3_delete_start},
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
    s3_delete_open(L);
    if (luaL_newmetatable(L, BATCH_MT)) {
        lua_pushcfunction(L, batch_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    luaL_newlib(L, s3_funcs);
    lua_pushliteral(L, "libcurl, expat, OpenSSL");
    lua_setfield(L, -2, "_BACKEND");
    return 1;
}
