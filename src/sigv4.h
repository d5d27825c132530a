/* AWS Signature Version 4 (HMAC-SHA256) for resclean: the C API of sigv4.c, used by s3req.c
 * and by the Lua module resclean.sigv4 (sigv4_lua.c). Pure and deterministic: the time is an
 * explicit input. */
#ifndef RESCLEAN_SIGV4_H
#define RESCLEAN_SIGV4_H
#include <stddef.h>
#include <time.h>

struct lua_State;

/* sha256 of the empty string: the payload hash of a request without a body */
#define SIGV4_EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define SIGV4_MAX_EXPIRES 604800L /* presigned URLs live at most 7 days */

typedef struct sigv4_kv {
    const char *name;
    const char *value;
} sigv4_kv;

/* The derived signing key of the last credential scope (date/region/service) signed with it.
 * One cache serves one secret key: callers keep it next to the secret and wipe it with it. */
typedef struct sigv4_key_cache {
    char scope[128];
    unsigned char key[32];
} sigv4_key_cache;

typedef struct sigv4_request {
    const char *method;    /* "GET" */
    const char *path;      /* raw, NOT percent-encoded, e.g. "/bucket/a b+c" (see path_encoded) */
    const sigv4_kv *query; /* raw (decoded) query keys/values; value may be "" (NULL = "") */
    size_t nquery;
    const sigv4_kv *headers; /* must include "host"; names any case */
    size_t nheaders;
    const char *payload_hash; /* hex sha256 of body or "UNSIGNED-PAYLOAD"; NULL = sha256("") */
    const char *access_key, *secret_key, *session_token; /* token may be NULL */
    const char *region, *service;
    time_t now;             /* explicit time: deterministic */
    int s3;                 /* 1: S3 rules (path encoded once, '/' kept, no normalisation) */
    long expires;           /* > 0: presign (X-Amz-* in query) instead of Authorization header */
    int omit_session_token; /* add the token after signing (aws-c-auth flag), header or query */
    /* additions (all default to 0) */
    int sign_body;              /* add a signed x-amz-content-sha256 header unless one is given */
    int no_normalize;           /* non-S3: keep dot segments and repeated slashes */
    int path_encoded;           /* path is already the wire form (percent-encoded): not encoded
                                   again for the wire; non-S3 still encodes it for the canonical URI */
    sigv4_key_cache *key_cache; /* NULL, or reuse/keep the signing key (4 HMACs a request fewer) */
} sigv4_request;

typedef struct sigv4_result {
    char *canonical_request, *string_to_sign;
    char signature[65];
    char amz_date[17];   /* YYYYMMDDTHHMMSSZ */
    char *authorization; /* header value, or NULL when presigning */
    char *query;         /* full encoded canonical query string incl. X-Amz-Signature when presigning
                            (and X-Amz-Security-Token when omit_session_token); otherwise the
                            encoded canonical query. Send it as is after '?' (may be "") */
    char *encoded_path;  /* the canonical URI as sent on the wire */
    /* additions */
    char *signed_headers;   /* "host;x-amz-date" */
    char *credential_scope; /* "20150830/us-east-1/service/aws4_request" */
    /* Headers the caller must add to the request on top of its own (header signing only:
     * x-amz-date, x-amz-content-sha256 when sign_body added it, x-amz-security-token).
     * Names are lower-case literals; values point into this result (valid until free). */
    sigv4_kv add_headers[3]; /* (do not copy the struct: values may point at amz_date) */
    size_t nadd_headers;
    char *payload_hash_;  /* private storage for add_headers */
    char *session_token_; /* private storage for add_headers */
} sigv4_result;

/* 0 on success, -1 on allocation failure or a request missing a required field (result zeroed/freed) */
int sigv4_sign(const sigv4_request *req, sigv4_result *out);
void sigv4_result_free(sigv4_result *out);
/* aws-chunked (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) chunk signature: *string_to_sign is malloc'd.
 * 0 on success, -1 on allocation failure. */
int sigv4_sign_chunk(const char *secret_key, const char *region, const char *service, time_t now,
                     const char *previous_signature, const char *chunk_hash, char **string_to_sign,
                     char signature[65]);
void sigv4_sha256_hex(const void *data, size_t len, char out[65]);
void sigv4_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
                       unsigned char out[32]);
/* percent-encode per SigV4 (unreserved A-Za-z0-9-._~ kept); keep_slash for paths. Returns malloc'd
 * string, NULL on allocation failure. */
char *sigv4_uri_encode(const char *s, size_t len, int keep_slash);
/* Does the request carry a header of that (lower-case) name, in any case? */
int sigv4_has_header(const sigv4_request *r, const char *lname);
/* A-Za-z0-9-._~: the bytes SigV4 never encodes. */
int sigv4_unreserved(unsigned char c);
/* "YYYYMMDDTHHMMSSZ" of now (UTC); -1 outside years 0-9999. */
int sigv4_format_date(time_t now, char amz_date[17]);
/* "20150830T123600Z" or "2015-08-30T12:36:00Z" -> epoch seconds; -1 on a malformed string or a
 * time that does not exist. */
int sigv4_parse_time(const char *s, size_t len, time_t *out);
/* An RFC 3339 time as S3 lists it, "2026-11-29T19:30:01.123Z" ('T', 't' or ' ' between date and
 * time; a fraction or none; "Z", an offset "+01:00" or none: UTC) -> epoch seconds with the
 * fraction; -1 when malformed or the time does not exist. */
int sigv4_parse_iso8601(const char *s, size_t len, double *out);

/* sigv4_lua.c: the Lua module. */
int luaopen_resclean_sigv4(struct lua_State *L);
#endif
