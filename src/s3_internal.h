/*
 * What the units of the resclean.s3 binding share (s3.c: the client and every call but the
 * delete family; s3_delete.c: delete_many, delete_start and their DeleteObjects requests).
 * Private: nothing outside the binding includes it.
 */
#ifndef RESCLEAN_S3_INTERNAL_H
#define RESCLEAN_S3_INTERNAL_H
#include <stddef.h>

#include <lua.h>

#include "buf.h"
#include "http.h"
#include "s3req.h"
#include "s3xml.h"

#define CLIENT_MT "resclean.s3.client"
#define BATCH_MT "resclean.s3.batch"
#define MAX_DELETE_KEYS 1000 /* S3's limit per DeleteObjects */
#define MAX_CONCURRENCY HTTP_MAX_CONCURRENCY
#define EMPTY_KEY_MSG "an empty key is refused before any request"

typedef struct s3_client {
    int closed, busy;
    int concurrency; /* head_many and delete_many, unless a call says otherwise */
    http_client http;
    s3_target target;
} s3_client;

/* The requests of one call and everything they point at. */
typedef struct s3_batch {
    s3_req *reqs;
    size_t nreq;
    http_req **hreqs; /* &reqs[i].http, for the transport */
    http_batch run;
    s3xml_key *keys; /* head_many, delete_many */
    size_t nkeys;
    char *arena; /* copies of the keys */
    s3xml_list *list;
    buf scratch; /* presign */
} s3_batch;

/* A call in progress, for the transport's start hook. */
typedef struct s3_call {
    lua_State *L;
    s3_client *c;
    int trace; /* stack index of the trace function, or 0 */
} s3_call;

/* The client at stack index 1, open and not busy; raises otherwise. */
s3_client *s3_check_client(lua_State *L);

/* Push a new batch of nreq requests (GETs of the bucket until set); raises on out of memory
 * (the batch frees). s3_batch_release frees everything it owns; idempotent. */
s3_batch *s3_batch_new(lua_State *L, size_t nreq);
void s3_batch_release(s3_batch *b);

/* Hand the batch's requests to the transport: at most conc at once, each attempt signed
 * (and traced) through k. */
void s3_batch_bind(s3_batch *b, int conc, s3_call *k);
/* Raise for a transport result rc other than HTTP_OK (a hook's error is on the stack top). */
void s3_raise_transport(lua_State *L, int rc);
/* Run the batch, at most conc requests at once; raise (after freeing it) when it could not
 * finish. */
void s3_run_batch(lua_State *L, s3_client *c, s3_batch *b, int conc);

/* Push the error table of a request that failed: refused, no answer, or an HTTP error. The
 * overrides (NULL: none) replace the code and message. */
void s3_push_req_error(lua_State *L, const s3_req *r, const char *op, const char *code_override,
                       const char *msg_override);
/* An answer with a 2xx status to a request that was sent. */
int s3_req_ok(const s3_req *r);
/* A single DELETE that succeeded: 2xx, or 404 NoSuchKey (gone too). */
int s3_delete_ok(const s3_req *r);

/* The concurrency option of the table at idx (the client's default without one); raises on
 * misuse. */
int s3_opt_concurrency(lua_State *L, int idx, s3_client *c);
/* Check a keys table (array of strings) at idx, return its length, *total the bytes its
 * copies take; raises on misuse. s3_copy_keys copies them into the batch. */
size_t s3_check_keys(lua_State *L, int idx, size_t *total);
void s3_copy_keys(lua_State *L, int idx, s3_batch *b, size_t n, size_t total);

/* s3_delete.c: client:delete_many, client:delete_start, and the metatable of the pending
 * calls delete_start returns (registered by s3_delete_open). */
int s3_delete_many(lua_State *L);
int s3_delete_start(lua_State *L);
void s3_delete_open(lua_State *L);

#endif
