/*
 * resclean.s3's delete family: client:delete_many (DeleteObjects of up to 1,000 keys a
 * request, single DELETEs for keys XML cannot carry, empty keys refused unsent) and
 * client:delete_start (the same, in flight while the caller works: pending:pump(),
 * pending:finish()). The client, batches and errors are s3.c's (s3_internal.h).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include <lauxlib.h>
#include <lua.h>

#include "http.h"
#include "luax.h"
#include "s3_internal.h"
#include "s3req.h"
#include "s3xml.h"

/* ---------------------------------------------------------------- delete_many */

/* The options of delete_many: quiet, keys per DeleteObjects request. */
static int delete_options(lua_State *L, int idx, lua_Integer *per) {
    int quiet = 0;
    *per = MAX_DELETE_KEYS;
    if (!lua_istable(L, idx))
        return 0;
    lua_getfield(L, idx, "quiet");
    quiet = lua_toboolean(L, -1);
    lua_getfield(L, idx, "batch");
    if (!lua_isnil(L, -1)) {
        *per = luaL_checkinteger(L, -1);
        if (*per < 1 || *per > MAX_DELETE_KEYS)
            luaL_error(L, "batch must be 1..%d", MAX_DELETE_KEYS);
    }
    lua_pop(L, 2);
    return quiet;
}

/* How many keys go in DeleteObjects (XML can carry them), how many alone (single DELETEs). */
static void count_keys(lua_State *L, int idx, size_t n, size_t *nxml, size_t *nsingle) {
    *nxml = *nsingle = 0;
    luaL_checkstack(L, 4, NULL);
    for (size_t i = 1; i <= n; i++) {
        size_t len;
        lua_rawgeti(L, idx, (lua_Integer)i);
        const char *s = lua_tolstring(L, -1, &len);
        if (len > 0 && s3xml_key_safe((const unsigned char *)s, len))
            (*nxml)++;
        else if (len > 0)
            (*nsingle)++;
        lua_pop(L, 1);
    }
}

/* Make r the DeleteObjects of keys order[0..n) (order owned by r from now on). */
static void build_delete_objects(lua_State *L, s3_req *r, s3xml_key **order, size_t n, int quiet) {
    buf body = {0};
    s3req_init(r, "POST", NULL, 0);
    r->order = order;
    r->norder = n;
    s3xml_delete_request(&body, order, n, quiet);
    size_t len = body.len;
    if ((r->body_owned = buf_take(&body)) == NULL)
        luaL_error(L, "not enough memory");
    r->query[0] = (sigv4_kv){"delete", ""};
    r->nquery = 1;
    r->content_type = "application/xml";
    s3req_set_body(r, r->body_owned, len, 1);
    qsort(r->order, n, sizeof *r->order, s3xml_key_cmp);
}

/* Assign every key to a request: requests [0, nchunks) are DeleteObjects of up to per keys,
 * the others single DELETEs of keys XML cannot carry; empty keys are refused unsent. */
static void plan_deletes(lua_State *L, s3_batch *b, size_t nxml, size_t nchunks, size_t per, int quiet) {
    size_t ri = nchunks, ci = 0, inchunk = 0, want = 0;
    s3xml_key **order = NULL;
    for (size_t i = 0; i < b->nkeys; i++) {
        s3xml_key *k = &b->keys[i];
        if (k->len == 0) {
            snprintf(k->code, sizeof k->code, "EmptyKey");
            snprintf(k->message, sizeof k->message, EMPTY_KEY_MSG);
            k->state = S3XML_KEY_ERROR;
            k->req = SIZE_MAX;
        } else if (!s3xml_key_safe((const unsigned char *)k->s, k->len)) {
            s3req_init(&b->reqs[ri], "DELETE", k->s, k->len);
            k->req = ri++;
        } else {
            if (order == NULL) {
                size_t left = nxml - ci * per;
                want = left < per ? left : per;
                if ((order = malloc(want * sizeof *order)) == NULL)
                    luaL_error(L, "not enough memory");
                b->reqs[ci].order = order; /* owned by the batch from now on */
            }
            order[inchunk++] = k;
            k->req = ci;
            if (inchunk == want) {
                build_delete_objects(L, &b->reqs[ci++], order, inchunk, quiet);
                inchunk = 0;
                order = NULL;
            }
        }
    }
}

/* Apply each DeleteObjects reply to its keys: a failed request, or a reply that is not a
 * DeleteResult, deletes none of them. */
static void apply_delete_replies(s3_batch *b, size_t nchunks, int quiet) {
    for (size_t j = 0; j < nchunks; j++) {
        s3_req *r = &b->reqs[j];
        const http_req *h = &r->http;
        if (!s3_req_ok(r) || h->status != 200 ||
            s3xml_delete_result(h->resp.p, h->resp.len, r->order, r->norder, quiet) != 0)
            for (size_t k = 0; k < r->norder; k++)
                r->order[k]->state = S3XML_KEY_FAILED;
    }
}

/* The error of a key the reply lists as an <Error>, leaves out, or that was refused unsent. */
static void push_key_error(lua_State *L, const s3_batch *b, const s3xml_key *k) {
    const s3_req *r = k->req != SIZE_MAX ? &b->reqs[k->req] : NULL;
    if (k->state == S3XML_KEY_NOT_IN_REPLY) {
        luax_newerror(L, "s3", "NotInReply");
        luax_setstr(L, "message", "the DeleteObjects reply does not mention this key");
    } else {
        luax_newerror(L, "s3", k->code);
        luax_setstr(L, "message", k->message[0] ? k->message : k->code);
    }
    luax_setstr(L, "op", "delete_many");
    luax_setlstr(L, "key", k->s, k->len);
    if (r != NULL) { /* the reply's status: a reply was received */
        lua_pushinteger(L, r->http.status);
        lua_setfield(L, -2, "status");
        luax_setstr(L, "request_id", r->http.h_id);
    }
}

/* {key, deleted=true} or {key, deleted=false, err}; returns whether deleted. */
static int push_key_result(lua_State *L, const s3_batch *b, const s3xml_key *k, size_t nchunks) {
    const s3_req *r = k->req != SIZE_MAX ? &b->reqs[k->req] : NULL;
    int ok = 0;
    lua_createtable(L, 0, 3);
    luax_setlstr(L, "key", k->s, k->len);
    if (r != NULL && k->req >= nchunks) { /* single DELETE */
        if (!(ok = s3_delete_ok(r)))
            s3_push_req_error(L, r, "delete", NULL, NULL);
    } else if (k->state == S3XML_KEY_DELETED) {
        ok = 1;
    } else if (k->state == S3XML_KEY_FAILED) {
        if (s3_req_ok(r))
            s3_push_req_error(L, r, "delete_many", "MalformedReply",
                              "DeleteObjects reply is not a DeleteResult document");
        else
            s3_push_req_error(L, r, "delete_many", NULL, NULL);
        luax_setlstr(L, "key", k->s, k->len);
    } else {
        push_key_error(L, b, k);
    }
    if (!ok)
        lua_setfield(L, -2, "err");
    lua_pushboolean(L, ok);
    lua_setfield(L, -2, "deleted");
    return ok;
}

/* The batch of a delete_many(keys at 2, options at 3), planned, pushed; *nchunks and *quiet
 * for its replies; *conc how many requests at once. */
static s3_batch *delete_batch(lua_State *L, s3_client *c, size_t *nchunks, int *quiet, int *conc) {
    size_t total, nxml, nsingle, n = s3_check_keys(L, 2, &total);
    *conc = s3_opt_concurrency(L, 3, c);
    lua_Integer per;
    *quiet = delete_options(L, 3, &per);
    count_keys(L, 2, n, &nxml, &nsingle);
    *nchunks = (nxml + (size_t)per - 1) / (size_t)per;
    s3_batch *b = s3_batch_new(L, *nchunks + nsingle);
    s3_copy_keys(L, 2, b, n, total);
    plan_deletes(L, b, nxml, *nchunks, (size_t)per, *quiet);
    return b;
}

/* After the batch ran: push results, nfailed; the batch is freed. */
static int delete_results(lua_State *L, s3_batch *b, size_t nchunks, int quiet) {
    apply_delete_replies(b, nchunks, quiet);
    lua_Integer failed = 0;
    lua_createtable(L, (int)b->nkeys, 0);
    for (size_t i = 0; i < b->nkeys; i++) {
        if (!push_key_result(L, b, &b->keys[i], nchunks))
            failed++;
        lua_rawseti(L, -2, (lua_Integer)(i + 1));
    }
    lua_pushinteger(L, failed);
    s3_batch_release(b);
    return 2;
}

/* client:delete_many(keys, {concurrency=N, quiet=false, batch=1000}) -> results, nfailed;
 * results[i] is {key, deleted=true} or {key, deleted=false, err} */
int s3_delete_many(lua_State *L) {
    s3_client *c = s3_check_client(L);
    size_t nchunks;
    int quiet, conc;
    s3_batch *b = delete_batch(L, c, &nchunks, &quiet, &conc);
    s3_run_batch(L, c, b, conc);
    return delete_results(L, b, nchunks, quiet);
}

/* ---------------------------------------------------------------- delete_start */

/* A delete_many in flight: client:delete_start(keys, opts) sends it and returns at once;
 * pending:pump() moves it on without waiting; pending:finish() waits for the rest and
 * returns what delete_many would. Meanwhile the server works on the requests, and the
 * caller on something else (the next batch's database work). The client is busy until
 * finish (or __gc/__close, which detach what still runs): one call in flight per client. */
typedef struct s3_pending {
    s3_client *c; /* anchored: user value 1 */
    s3_batch *b;  /* anchored: user value 2 */
    size_t nchunks;
    int quiet, open; /* open: the transport holds the batch (http_begin .. http_end) */
    s3_call k;
} s3_pending;

#define PENDING_MT "resclean.s3.pending"

/* Detach from the transport and free the client for other calls; idempotent. */
static void pending_end(s3_pending *p) {
    if (p->open) {
        http_end(&p->c->http, &p->b->run);
        p->c->busy = 0;
        p->open = 0;
    }
}

static int pending_close(lua_State *L) {
    pending_end(luaL_checkudata(L, 1, PENDING_MT));
    return 0;
}

/* One step (wait_ms as http_step's), the client's trace hook in place; raises, after
 * ending the call, when the transport failed. */
static void pending_step(lua_State *L, s3_pending *p, long wait_ms, int begin) {
    luaL_checkstack(L, 4, NULL);
    lua_getiuservalue(L, 1, 1);  /* client */
    lua_getiuservalue(L, -1, 1); /* client trace */
    p->k.L = L;
    p->k.trace = lua_isfunction(L, -1) ? lua_gettop(L) : 0;
    int rc = begin ? http_begin(&p->c->http, &p->b->run) : http_step(&p->c->http, &p->b->run, wait_ms);
    if (rc != HTTP_OK) {
        pending_end(p);
        s3_raise_transport(L, rc);
    }
    p->k.trace = 0;
    lua_pop(L, 2);
}

static s3_pending *check_pending(lua_State *L) {
    s3_pending *p = luaL_checkudata(L, 1, PENDING_MT);
    if (!p->open)
        luaL_error(L, "this delete_start was already finished");
    return p;
}

/* client:delete_start(keys, opts) -> pending (options as delete_many's) */
int s3_delete_start(lua_State *L) {
    s3_client *c = s3_check_client(L);
    lua_settop(L, 3);
    size_t nchunks;
    int quiet, conc;
    s3_batch *b = delete_batch(L, c, &nchunks, &quiet, &conc); /* client keys opts batch */
    /* Made after the batch, so finalised before it: a pending collected unfinished detaches
     * its requests while the batch's memory is still there. */
    s3_pending *p = lua_newuserdatauv(L, sizeof *p, 2); /* client keys opts batch pending */
    memset(p, 0, sizeof *p);
    luaL_setmetatable(L, PENDING_MT);
    lua_insert(L, 4); /* client keys opts pending batch */
    lua_setiuservalue(L, 4, 2);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, 4, 1);
    p->c = c;
    p->b = b;
    p->nchunks = nchunks;
    p->quiet = quiet;
    p->k.c = c;
    s3_batch_bind(b, conc, &p->k);
    c->busy = 1;
    p->open = 1;
    lua_settop(L, 4);
    lua_replace(L, 1); /* pending at 1, as its methods see it */
    lua_settop(L, 1);
    pending_step(L, p, 0, 1);
    return 1;
}

/* pending:pump() -> whether every request is answered; never waits. */
static int pending_pump(lua_State *L) {
    s3_pending *p = check_pending(L);
    lua_settop(L, 1);
    pending_step(L, p, 0, 0);
    lua_pushboolean(L, http_finished(&p->b->run));
    return 1;
}

/* pending:finish() -> results, nfailed (as delete_many's) */
static int pending_finish(lua_State *L) {
    s3_pending *p = check_pending(L);
    lua_settop(L, 1);
    while (!http_finished(&p->b->run))
        pending_step(L, p, -1, 0);
    pending_end(p);
    return delete_results(L, p->b, p->nchunks, p->quiet);
}

/* Registers the metatable of delete_start's pending calls. */
void s3_delete_open(lua_State *L) {
    if (luaL_newmetatable(L, PENDING_MT)) {
        static const luaL_Reg pending_methods[] = {
            {"finish", pending_finish}, {"pump", pending_pump}, {NULL, NULL}};
        lua_pushcfunction(L, pending_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, pending_close);
        lua_setfield(L, -2, "__close");
        luaL_newlib(L, pending_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
}
