/* s3req.h: S3 requests, signed for each attempt. */
#include "s3req.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

void s3req_init(s3_req *r, const char *method, const char *key, size_t keylen) {
    memset(r, 0, sizeof *r);
    r->http.method = method;
    r->http.nobody = strcmp(method, "HEAD") == 0;
    r->http.idempotent = 1;
    r->key = key;
    r->keylen = keylen;
    memcpy(r->payload_hash, SIGV4_EMPTY_SHA256, sizeof SIGV4_EMPTY_SHA256);
    if (key != NULL && keylen == 0) {
        r->local_code = "EmptyKey";
        r->http.state = HTTP_DONE;
    }
}

void s3req_set_body(s3_req *r, const char *body, size_t len, int md5) {
    r->http.body = body;
    r->http.bodylen = len;
    sigv4_sha256_hex(body, len, r->payload_hash);
    if (md5) {
        unsigned char md[16];
        unsigned int mdlen = 0;
        EVP_Digest(body, len, md, &mdlen, EVP_md5(), NULL);
        EVP_EncodeBlock((unsigned char *)r->content_md5, md, 16);
    }
}

void s3req_free(s3_req *r) {
    http_req_reset(&r->http);
    free(r->body_owned);
    free(r->order);
    r->body_owned = NULL;
    r->order = NULL;
}

/* The raw (not encoded) path and the Host of a request for key (NULL: the bucket). */
static void path_and_host(const s3_target *t, const char *key, size_t keylen, buf *path, buf *host) {
    if (t->path_style) {
        buf_addstr(host, t->authority);
        buf_addc(path, '/');
        buf_addstr(path, t->bucket);
        if (key != NULL)
            buf_addc(path, '/');
    } else {
        buf_addstr(host, t->bucket);
        buf_addc(host, '.');
        buf_addstr(host, t->authority);
        buf_addc(path, '/');
    }
    if (key != NULL)
        buf_add(path, key, keylen);
}

/* Sign method on the raw path (encoded here, with its length: sigv4 takes C strings, and a
 * key with a NUL byte must not become the shorter key before it: DELETE "a\0b" deleting "a"). */
static int sign_path(s3_target *t, sigv4_request *q, const buf *path, sigv4_result *res) {
    char *wire = sigv4_uri_encode(path->p, path->len, 1);
    if (wire == NULL)
        return -1;
    q->path = wire;
    q->path_encoded = 1;
    q->access_key = t->access_key;
    q->secret_key = t->secret_key;
    q->session_token = t->session_token;
    q->region = t->region;
    q->service = "s3";
    q->s3 = 1;
    int rc = sigv4_sign(q, res);
    free(wire);
    return rc;
}

/* "scheme://host/path[?query]" */
static void add_url(buf *url, const s3_target *t, const char *host, const sigv4_result *res) {
    buf_addstr(url, t->https ? "https://" : "http://");
    buf_addstr(url, host);
    buf_addstr(url, res->encoded_path);
    if (res->query != NULL && res->query[0] != '\0') {
        buf_addc(url, '?');
        buf_addstr(url, res->query);
    }
}

/* The headers curl sends: the signed ones, Authorization, and two that curl must not add. */
static int add_headers(s3_req *r, const s3_signed *sg) {
    http_req *h = &r->http;
    for (size_t i = 0; i < sg->nh; i++)
        if (http_add_header(h, sg->hdrs[i].name, sg->hdrs[i].value) != 0)
            return -1;
    if (http_add_header(h, "authorization", sg->res.authorization) != 0)
        return -1;
    if (http_add_line(h, "Expect:") != 0) /* no 100-continue round trip */
        return -1;
    if (r->content_type == NULL && http_add_line(h, "Content-Type:") != 0) /* not curl's form default */
        return -1;
    return 0;
}

int s3req_sign(s3_target *t, s3_req *r, time_t now, s3_signed *sg) {
    buf path = {0}, url = {0};
    memset(sg, 0, sizeof *sg);
    path_and_host(t, r->key, r->keylen, &path, &sg->host);
    if (buf_failed(&path) || buf_failed(&sg->host)) {
        buf_free(&path);
        return -1;
    }
    sg->hdrs[sg->nh++] = (sigv4_kv){"host", sg->host.p};
    sg->hdrs[sg->nh++] = (sigv4_kv){"x-amz-content-sha256", r->payload_hash};
    if (r->content_md5[0] != '\0')
        sg->hdrs[sg->nh++] = (sigv4_kv){"content-md5", r->content_md5};
    if (r->content_type != NULL)
        sg->hdrs[sg->nh++] = (sigv4_kv){"content-type", r->content_type};
    sigv4_request q;
    memset(&q, 0, sizeof q);
    q.method = r->http.method;
    q.query = r->query;
    q.nquery = r->nquery;
    q.headers = sg->hdrs;
    q.nheaders = sg->nh;
    q.payload_hash = r->payload_hash;
    q.now = now;
    q.key_cache = &t->key_cache;
    int rc = sign_path(t, &q, &path, &sg->res);
    buf_free(&path);
    if (rc != 0)
        return -1;
    for (size_t i = 0; i < sg->res.nadd_headers && sg->nh < sizeof sg->hdrs / sizeof sg->hdrs[0]; i++)
        sg->hdrs[sg->nh++] = sg->res.add_headers[i];
    add_url(&url, t, sg->host.p, &sg->res);
    if ((r->http.url = buf_take(&url)) == NULL)
        return -1;
    return add_headers(r, sg);
}

void s3req_signed_free(s3_signed *sg) {
    sigv4_result_free(&sg->res);
    buf_free(&sg->host);
}

int s3req_presign(s3_target *t, const char *method, const char *key, size_t keylen, long expires,
                  time_t now, buf *url) {
    buf path = {0}, host = {0};
    sigv4_result res;
    memset(&res, 0, sizeof res);
    path_and_host(t, key, keylen, &path, &host);
    int rc = -1;
    if (!buf_failed(&path) && !buf_failed(&host)) {
        sigv4_kv hdr = {"host", host.p};
        sigv4_request q;
        memset(&q, 0, sizeof q);
        q.method = method;
        q.headers = &hdr;
        q.nheaders = 1;
        q.payload_hash = "UNSIGNED-PAYLOAD";
        q.now = now;
        q.expires = expires;
        rc = sign_path(t, &q, &path, &res);
    }
    if (rc == 0) {
        add_url(url, t, host.p, &res);
        rc = buf_failed(url) ? -1 : 0;
    }
    sigv4_result_free(&res);
    buf_free(&path);
    buf_free(&host);
    return rc;
}

static void free_secret(char **p) {
    if (*p != NULL) {
        OPENSSL_cleanse(*p, strlen(*p));
        free(*p);
        *p = NULL;
    }
}

void s3_target_free(s3_target *t) {
    free(t->authority);
    free(t->region);
    free(t->access_key);
    free(t->bucket);
    free_secret(&t->secret_key);
    free_secret(&t->session_token);
    OPENSSL_cleanse(&t->key_cache, sizeof t->key_cache);
    t->authority = t->region = t->access_key = t->bucket = NULL;
}
