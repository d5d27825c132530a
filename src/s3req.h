/*
 * An S3 request: what one call sends, and how each attempt becomes a signed URL and
 * headers (SigV4, path-style or virtual-hosted). No Lua: s3.c's start hook calls
 * s3req_sign() for every attempt, and spec/fuzz checks it with arbitrary keys.
 */
#ifndef RESCLEAN_S3REQ_H
#define RESCLEAN_S3REQ_H
#include <stddef.h>
#include <time.h>

#include "buf.h"
#include "http.h"
#include "s3xml.h"
#include "sigv4.h"

/* Where requests go and as whom. */
typedef struct s3_target {
    int https, path_style;
    char *authority; /* host[:port] as sent in Host, default port dropped */
    char *region, *access_key, *secret_key, *session_token, *bucket;
    sigv4_key_cache key_cache; /* derived from secret_key: wiped with it */
} s3_target;

typedef struct s3_req {
    http_req http;   /* first: the transport's part (http.h) */
    const char *key; /* raw key (not owned), NULL: the bucket itself */
    size_t keylen;
    sigv4_kv query[7];
    size_t nquery;
    const char *content_type;
    char *body_owned;
    char payload_hash[65];
    char content_md5[32];   /* "" when none */
    const char *local_code; /* refused before any request: the code of its error */
    s3xml_key **order;      /* DeleteObjects: its keys, sorted by s3xml_key_cmp (owned) */
    size_t norder;
} s3_req;

/* One attempt as signed, until the trace hook has seen it. */
typedef struct s3_signed {
    buf host;
    sigv4_kv hdrs[10]; /* names lower case; values point into host, the request, res */
    size_t nh;
    sigv4_result res;
} s3_signed;

/* A zeroed r for method and key (NULL: the bucket): idempotent, no body. An empty key is
 * refused: r is done, with local_code "EmptyKey". */
void s3req_init(s3_req *r, const char *method, const char *key, size_t keylen);
/* The body (not copied), its sha256 and, md5 set, its Content-MD5. */
void s3req_set_body(s3_req *r, const char *body, size_t len, int md5);
void s3req_free(s3_req *r);

/* Sign one attempt of r at time now: sets r->http.url and r->http.hdrs; sg keeps what a
 * trace shows. 0, or -1 out of memory. sg is to be freed either way. */
int s3req_sign(s3_target *t, s3_req *r, time_t now, s3_signed *sg);
void s3req_signed_free(s3_signed *sg);

/* A presigned URL for method and key (non-empty), appended to url. 0, or -1 out of memory. */
int s3req_presign(s3_target *t, const char *method, const char *key, size_t keylen, long expires,
                  time_t now, buf *url);

void s3_target_free(s3_target *t);

#endif
