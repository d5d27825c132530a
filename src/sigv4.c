/* resclean.sigv4: AWS Signature Version 4 (header signing and presigned URLs) with OpenSSL.
 * The C half (sigv4_sign and friends) is used by s3.c; the Lua half is `require "resclean.sigv4"`.
 * Pure: the time is an input, nothing is logged, and secret-derived key material is cleansed. */
#define _DEFAULT_SOURCE /* timegm, gmtime_r */
#include "sigv4.h"

#include <lauxlib.h>
#include <lua.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ALGORITHM "AWS4-HMAC-SHA256"
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define MAX_EXPIRES 604800L /* SigV4 presigned URLs live at most 7 days */

/* ---- growable buffer: appends become no-ops after an allocation failure ---- */

typedef struct buf {
    char *p;
    size_t len, cap;
    int oom;
} buf;

static void buf_reserve(buf *b, size_t extra) {
    if (b->oom)
        return;
    if (extra > SIZE_MAX - b->len - 1) {
        b->oom = 1;
        return;
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) {
        b->oom = 1;
        return;
    }
    b->p = p;
    b->cap = cap;
}

static void buf_addn(buf *b, const char *s, size_t n) {
    buf_reserve(b, n);
    if (b->oom)
        return;
    if (n > 0)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_adds(buf *b, const char *s) { buf_addn(b, s, strlen(s)); }
static void buf_addc(buf *b, char c) { buf_addn(b, &c, 1); }

/* The NUL-terminated contents (caller frees; "" when empty), or NULL after an allocation failure. */
static char *buf_take(buf *b) {
    buf_reserve(b, 0);
    if (b->oom) {
        free(b->p);
        *b = (buf){0};
        return NULL;
    }
    b->p[b->len] = '\0';
    char *p = b->p;
    *b = (buf){0};
    return p;
}

static void buf_free(buf *b) {
    free(b->p);
    *b = (buf){0};
}

/* ---- encoding ---- */

static int unreserved(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

static void buf_encode(buf *b, const char *s, size_t n, int keep_slash) {
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (unreserved(c) || (keep_slash && c == '/')) {
            buf_addc(b, (char)c);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            buf_addn(b, e, 3);
        }
    }
}

char *sigv4_uri_encode(const char *s, size_t len, int keep_slash) {
    buf b = {0};
    buf_encode(&b, s, len, keep_slash);
    return buf_take(&b);
}

static void hex_encode(const unsigned char *in, size_t n, char *out) {
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * n] = '\0';
}

/* ---- hashing ---- */

void sigv4_sha256_hex(const void *data, size_t len, char out[65]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32) {
        /* cannot happen with the default provider; never hand out a plausible hash */
        memset(out, '0', 64);
        out[64] = '\0';
        return;
    }
    hex_encode(md, 32, out);
}

void sigv4_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
                       unsigned char out[32]) {
    unsigned int outlen = 0;
    if (keylen > INT_MAX || HMAC(EVP_sha256(), key, (int)keylen, msg, msglen, out, &outlen) == NULL ||
        outlen != 32)
        memset(out, 0, 32);
}

/* kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" secret, date), region), service), "aws4_request") */
static int signing_key(const char *secret, const char *date8, const char *region, const char *service,
                       unsigned char key[32]) {
    size_t slen = strlen(secret);
    char *k = malloc(slen + 5);
    if (k == NULL)
        return -1;
    memcpy(k, "AWS4", 4);
    memcpy(k + 4, secret, slen + 1);
    unsigned char t[32];
    sigv4_hmac_sha256(k, slen + 4, date8, 8, t);
    OPENSSL_cleanse(k, slen + 4);
    free(k);
    sigv4_hmac_sha256(t, 32, region, strlen(region), key);
    sigv4_hmac_sha256(key, 32, service, strlen(service), t);
    sigv4_hmac_sha256(t, 32, "aws4_request", 12, key);
    OPENSSL_cleanse(t, sizeof t);
    return 0;
}

static void sign_hex(const unsigned char key[32], const char *msg, char out[65]) {
    unsigned char mac[32];
    sigv4_hmac_sha256(key, 32, msg, strlen(msg), mac);
    hex_encode(mac, 32, out);
}

static int format_date(time_t now, char amz_date[17]) {
    struct tm tm;
    if (gmtime_r(&now, &tm) == NULL || tm.tm_year < -1900 || tm.tm_year > 9999 - 1900)
        return -1;
    return strftime(amz_date, 17, "%Y%m%dT%H%M%SZ", &tm) == 16 ? 0 : -1;
}

/* ---- canonical URI ---- */

/* botocore's remove_dot_segments: drop "." and empty segments, ".." pops, keep a trailing '/'. */
static void buf_normalized_path(buf *b, const char *path) {
    buf o = {0};
    size_t n = strlen(path);
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && path[j] != '/')
            j++;
        size_t sl = j - i;
        if (sl == 0 || (sl == 1 && path[i] == '.')) {
            /* skip */
        } else if (sl == 2 && path[i] == '.' && path[i + 1] == '.') {
            while (o.len > 0 && o.p[o.len - 1] != '/')
                o.len--;
            if (o.len > 0)
                o.len--; /* the '/' before the popped segment */
        } else {
            buf_addc(&o, '/');
            buf_addn(&o, path + i, sl);
        }
        i = j + 1;
    }
    if (o.oom) {
        b->oom = 1;
    } else if (o.len == 0) {
        buf_addc(b, '/');
    } else {
        buf_addn(b, o.p, o.len);
        if (path[n - 1] == '/')
            buf_addc(b, '/');
    }
    buf_free(&o);
}

/* ---- canonical query ---- */

typedef struct qent {
    char *k, *v; /* encoded */
} qent;

static int qent_cmp(const void *a, const void *b) {
    const qent *x = a, *y = b;
    int c = strcmp(x->k, y->k);
    return c ? c : strcmp(x->v, y->v);
}

/* ---- canonical headers ---- */

typedef struct hent {
    char *name;  /* lower-cased */
    char *value; /* trimmed, inner runs of blanks collapsed */
    size_t idx;  /* input order, so duplicates keep it */
} hent;

static int hent_cmp(const void *a, const void *b) {
    const hent *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->idx > y->idx) - (x->idx < y->idx);
}

static int blank(char c) { return c == ' ' || c == '\t'; }

static char *lower_dup(const char *s) {
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d == NULL)
        return NULL;
    for (size_t i = 0; i <= n; i++)
        d[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] - 'A' + 'a') : s[i];
    return d;
}

static char *trim_dup(const char *s) {
    buf b = {0};
    while (blank(*s))
        s++;
    buf_reserve(&b, strlen(s));
    while (*s) {
        if (blank(*s)) {
            while (blank(*s))
                s++;
            if (*s)
                buf_addc(&b, ' ');
        } else {
            buf_addc(&b, *s++);
        }
    }
    return buf_take(&b);
}

static int header_given(const sigv4_request *r, const char *lname) {
    for (size_t i = 0; i < r->nheaders; i++) {
        const char *a = r->headers[i].name, *b = lname;
        if (a == NULL)
            continue;
        while (*a && *b && ((*a >= 'A' && *a <= 'Z') ? *a - 'A' + 'a' : *a) == *b)
            a++, b++;
        if (*a == '\0' && *b == '\0')
            return 1;
    }
    return 0;
}

/* ---- signing ---- */

void sigv4_result_free(sigv4_result *out) {
    if (out == NULL)
        return;
    free(out->canonical_request);
    free(out->string_to_sign);
    free(out->authorization);
    free(out->query);
    free(out->encoded_path);
    free(out->signed_headers);
    free(out->credential_scope);
    free(out->payload_hash_);
    free(out->session_token_);
    memset(out, 0, sizeof *out);
}

static char *str_dup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    return d ? memcpy(d, s, n) : NULL;
}

int sigv4_sign(const sigv4_request *r, sigv4_result *out) {
    memset(out, 0, sizeof *out);
    if (r->method == NULL || r->access_key == NULL || r->secret_key == NULL || r->region == NULL ||
        r->service == NULL || (r->nquery > 0 && r->query == NULL) || r->headers == NULL ||
        !header_given(r, "host") || r->expires < 0)
        return -1;
    const char *path = (r->path && r->path[0]) ? r->path : "/";
    if (path[0] != '/')
        return -1;
    const char *token = (r->session_token && r->session_token[0]) ? r->session_token : NULL;
    const char *payload = r->payload_hash ? r->payload_hash : EMPTY_SHA256;
    int presign = r->expires > 0;
    char date8[9];

    if (format_date(r->now, out->amz_date) < 0) {
        sigv4_result_free(out);
        return -1;
    }
    memcpy(date8, out->amz_date, 8);
    date8[8] = '\0';

    int rc = -1;
    size_t nq = 0, nh = 0;
    qent *q = NULL;
    hent *h = NULL;
    buf b = {0};
    unsigned char key[32];

    out->payload_hash_ = str_dup(payload);
    out->session_token_ = token ? str_dup(token) : NULL;
    if (out->payload_hash_ == NULL || (token && out->session_token_ == NULL))
        goto done;

    /* credential scope */
    buf_adds(&b, date8);
    buf_addc(&b, '/');
    buf_adds(&b, r->region);
    buf_addc(&b, '/');
    buf_adds(&b, r->service);
    buf_adds(&b, "/aws4_request");
    if ((out->credential_scope = buf_take(&b)) == NULL)
        goto done;

    /* the wire path, then the canonical URI */
    if (r->path_encoded)
        buf_adds(&b, path);
    else
        buf_encode(&b, path, strlen(path), 1);
    if ((out->encoded_path = buf_take(&b)) == NULL)
        goto done;

    /* headers: the caller's, then what signing adds (header mode only) */
    int add_date = !presign && !header_given(r, "x-amz-date");
    int add_sha = !presign && r->sign_body && !header_given(r, "x-amz-content-sha256");
    int add_token = !presign && token && !header_given(r, "x-amz-security-token");
    int sign_token = add_token && !r->omit_session_token;
    if (add_date)
        out->add_headers[out->nadd_headers++] = (sigv4_kv){"x-amz-date", out->amz_date};
    if (add_sha)
        out->add_headers[out->nadd_headers++] = (sigv4_kv){"x-amz-content-sha256", out->payload_hash_};
    if (add_token)
        out->add_headers[out->nadd_headers++] = (sigv4_kv){"x-amz-security-token", out->session_token_};

    size_t hmax = r->nheaders + 3;
    if ((h = calloc(hmax, sizeof *h)) == NULL)
        goto done;
    for (size_t i = 0; i < r->nheaders + out->nadd_headers; i++) {
        const sigv4_kv *kv = i < r->nheaders ? &r->headers[i] : &out->add_headers[i - r->nheaders];
        if (kv->name == NULL)
            goto done;
        if (i >= r->nheaders && !sign_token && strcmp(kv->name, "x-amz-security-token") == 0)
            continue; /* omit_session_token: sent, not signed */
        h[nh].idx = i;
        h[nh].name = lower_dup(kv->name);
        h[nh].value = trim_dup(kv->value ? kv->value : "");
        nh++;
        if (h[nh - 1].name == NULL || h[nh - 1].value == NULL)
            goto done;
    }
    qsort(h, nh, sizeof *h, hent_cmp);

    /* signed headers */
    for (size_t i = 0; i < nh; i++) {
        if (i > 0 && strcmp(h[i].name, h[i - 1].name) == 0)
            continue;
        if (i > 0)
            buf_addc(&b, ';');
        buf_adds(&b, h[i].name);
    }
    if ((out->signed_headers = buf_take(&b)) == NULL)
        goto done;

    /* query: the caller's, plus X-Amz-* when presigning */
    if ((q = calloc(r->nquery + 6, sizeof *q)) == NULL)
        goto done;
    for (size_t i = 0; i < r->nquery; i++, nq++) {
        const char *k = r->query[i].name ? r->query[i].name : "";
        const char *v = r->query[i].value ? r->query[i].value : "";
        q[nq].k = sigv4_uri_encode(k, strlen(k), 0);
        q[nq].v = sigv4_uri_encode(v, strlen(v), 0);
        if (q[nq].k == NULL || q[nq].v == NULL) {
            nq++;
            goto done;
        }
    }
    if (presign) {
        char expires[24];
        buf cred = {0};
        buf_adds(&cred, r->access_key);
        buf_addc(&cred, '/');
        buf_adds(&cred, out->credential_scope);
        char *credential = buf_take(&cred);
        snprintf(expires, sizeof expires, "%ld", r->expires);
        const sigv4_kv x[] = {
            {"X-Amz-Algorithm", ALGORITHM},
            {"X-Amz-Credential", credential},
            {"X-Amz-Date", out->amz_date},
            {"X-Amz-Expires", expires},
            {"X-Amz-SignedHeaders", out->signed_headers},
            {"X-Amz-Security-Token", token},
        };
        for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) {
            if (x[i].value == NULL)
                continue; /* no token (or no memory for the credential: caught below) */
            if (i == 5 && r->omit_session_token)
                continue;
            q[nq].k = str_dup(x[i].name);
            q[nq].v = sigv4_uri_encode(x[i].value, strlen(x[i].value), 0);
            nq++;
            if (q[nq - 1].k == NULL || q[nq - 1].v == NULL) {
                free(credential);
                goto done;
            }
        }
        free(credential);
        if (credential == NULL)
            goto done;
    }
    qsort(q, nq, sizeof *q, qent_cmp);
    for (size_t i = 0; i < nq; i++) {
        if (i > 0)
            buf_addc(&b, '&');
        buf_adds(&b, q[i].k);
        buf_addc(&b, '=');
        buf_adds(&b, q[i].v);
    }
    size_t canonical_query_len = b.len;

    /* canonical request: method, URI, query, headers, signed headers, payload hash */
    buf c = {0};
    buf_adds(&c, r->method);
    buf_addc(&c, '\n');
    if (r->s3)
        buf_adds(&c, out->encoded_path);
    else if (r->no_normalize)
        buf_encode(&c, out->encoded_path, strlen(out->encoded_path), 1);
    else {
        buf np = {0};
        buf_normalized_path(&np, out->encoded_path);
        if (np.oom)
            c.oom = 1;
        else
            buf_encode(&c, np.p, np.len, 1);
        buf_free(&np);
    }
    buf_addc(&c, '\n');
    if (b.p)
        buf_addn(&c, b.p, canonical_query_len);
    buf_addc(&c, '\n');
    for (size_t i = 0; i < nh; i++) {
        if (i > 0 && strcmp(h[i].name, h[i - 1].name) == 0) {
            buf_addc(&c, ',');
        } else {
            if (i > 0)
                buf_addc(&c, '\n');
            buf_adds(&c, h[i].name);
            buf_addc(&c, ':');
        }
        buf_adds(&c, h[i].value);
    }
    buf_adds(&c, "\n\n");
    buf_adds(&c, out->signed_headers);
    buf_addc(&c, '\n');
    buf_adds(&c, payload);
    if ((out->canonical_request = buf_take(&c)) == NULL) {
        buf_free(&b);
        goto done;
    }

    /* string to sign and signature */
    char creq_hash[65];
    sigv4_sha256_hex(out->canonical_request, strlen(out->canonical_request), creq_hash);
    buf s = {0};
    buf_adds(&s, ALGORITHM "\n");
    buf_adds(&s, out->amz_date);
    buf_addc(&s, '\n');
    buf_adds(&s, out->credential_scope);
    buf_addc(&s, '\n');
    buf_adds(&s, creq_hash);
    if ((out->string_to_sign = buf_take(&s)) == NULL) {
        buf_free(&b);
        goto done;
    }
    sigv4_key_cache *kc = r->key_cache;
    if (kc != NULL && strcmp(kc->scope, out->credential_scope) == 0) {
        memcpy(key, kc->key, sizeof key);
    } else {
        if (signing_key(r->secret_key, date8, r->region, r->service, key) < 0) {
            buf_free(&b);
            goto done;
        }
        if (kc != NULL) {
            size_t n = strlen(out->credential_scope);
            kc->scope[0] = '\0';
            if (n < sizeof kc->scope) { /* a longer scope is never cached */
                memcpy(kc->key, key, sizeof key);
                memcpy(kc->scope, out->credential_scope, n + 1);
            }
        }
    }
    sign_hex(key, out->string_to_sign, out->signature);

    if (presign) {
        buf_adds(&b, nq > 0 ? "&X-Amz-Signature=" : "X-Amz-Signature=");
        buf_adds(&b, out->signature);
        if (token && r->omit_session_token) {
            buf_adds(&b, "&X-Amz-Security-Token=");
            buf_encode(&b, token, strlen(token), 0);
        }
    } else {
        buf a = {0};
        buf_adds(&a, ALGORITHM " Credential=");
        buf_adds(&a, r->access_key);
        buf_addc(&a, '/');
        buf_adds(&a, out->credential_scope);
        buf_adds(&a, ", SignedHeaders=");
        buf_adds(&a, out->signed_headers);
        buf_adds(&a, ", Signature=");
        buf_adds(&a, out->signature);
        if ((out->authorization = buf_take(&a)) == NULL) {
            buf_free(&b);
            goto done;
        }
    }
    if ((out->query = buf_take(&b)) == NULL)
        goto done;
    rc = 0;

done:
    OPENSSL_cleanse(key, sizeof key);
    for (size_t i = 0; i < nq; i++) {
        free(q[i].k);
        free(q[i].v);
    }
    free(q);
    for (size_t i = 0; i < nh; i++) {
        free(h[i].name);
        free(h[i].value);
    }
    free(h);
    buf_free(&b);
    if (rc < 0)
        sigv4_result_free(out);
    return rc;
}

int sigv4_sign_chunk(const char *secret_key, const char *region, const char *service, time_t now,
                     const char *previous_signature, const char *chunk_hash, char **string_to_sign,
                     char signature[65]) {
    char amz_date[17], date8[9];
    unsigned char key[32];
    *string_to_sign = NULL;
    signature[0] = '\0';
    if (format_date(now, amz_date) < 0)
        return -1;
    memcpy(date8, amz_date, 8);
    date8[8] = '\0';
    buf s = {0};
    buf_adds(&s, ALGORITHM "-PAYLOAD\n");
    buf_adds(&s, amz_date);
    buf_addc(&s, '\n');
    buf_adds(&s, date8);
    buf_addc(&s, '/');
    buf_adds(&s, region);
    buf_addc(&s, '/');
    buf_adds(&s, service);
    buf_adds(&s, "/aws4_request\n");
    buf_adds(&s, previous_signature);
    buf_adds(&s, "\n" EMPTY_SHA256 "\n");
    buf_adds(&s, chunk_hash);
    char *sts = buf_take(&s);
    if (sts == NULL)
        return -1;
    if (signing_key(secret_key, date8, region, service, key) < 0) {
        free(sts);
        return -1;
    }
    sign_hex(key, sts, signature);
    OPENSSL_cleanse(key, sizeof key);
    *string_to_sign = sts;
    return 0;
}

/* =========================== Lua binding =========================== */

#define RESULT_MT "resclean.sigv4.result"

/* A box owning a sigv4_result, so a Lua error while building the reply table frees it (__gc). */
static int result_gc(lua_State *L) {
    sigv4_result *r = luaL_checkudata(L, 1, RESULT_MT);
    sigv4_result_free(r);
    return 0;
}

static sigv4_result *new_result_box(lua_State *L) {
    sigv4_result *r = lua_newuserdatauv(L, sizeof *r, 0);
    memset(r, 0, sizeof *r);
    if (luaL_newmetatable(L, RESULT_MT)) {
        lua_pushcfunction(L, result_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushliteral(L, "resclean.sigv4.result");
        lua_setfield(L, -2, "__name");
    }
    lua_setmetatable(L, -2);
    return r;
}

/* Raises "bad argument #1 to 'sign' (field 'x': ...)". */
_Noreturn static void field_error(lua_State *L, const char *field, const char *expected) {
    const char *msg = lua_pushfstring(L, "field '%s': %s", field, expected);
    luaL_argerror(L, 1, msg);
    abort(); /* not reached: luaL_argerror raises */
}

/* An optional string field of table 1 (anchored by the table itself); NULL when absent. */
static const char *opt_string(lua_State *L, const char *field, size_t *len) {
    const char *s = NULL;
    *len = 0;
    int t = lua_getfield(L, 1, field);
    if (t == LUA_TSTRING)
        s = lua_tolstring(L, -1, len);
    else if (t != LUA_TNIL)
        field_error(L, field, lua_pushfstring(L, "string expected, got %s", luaL_typename(L, -1)));
    lua_pop(L, 1);
    return s;
}

static const char *req_string(lua_State *L, const char *field) {
    size_t len;
    const char *s = opt_string(L, field, &len);
    if (s == NULL || len == 0)
        field_error(L, field, "non-empty string expected");
    if (strlen(s) != len)
        field_error(L, field, "embedded zero byte");
    return s;
}

static int opt_bool(lua_State *L, const char *field, int dflt) {
    int t = lua_getfield(L, 1, field);
    int v = dflt;
    if (t == LUA_TBOOLEAN)
        v = lua_toboolean(L, -1);
    else if (t != LUA_TNIL)
        field_error(L, field, lua_pushfstring(L, "boolean expected, got %s", luaL_typename(L, -1)));
    lua_pop(L, 1);
    return v;
}

static int two(const char *s) { return (s[0] - '0') * 10 + (s[1] - '0'); }

static int all_digits(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* "20150830T123600Z" or "2015-08-30T12:36:00Z" -> epoch seconds; -1 on a malformed string. */
static int parse_time(const char *s, size_t len, time_t *out) {
    char d[15];
    if (len == 16 && all_digits(s, 8) && s[8] == 'T' && all_digits(s + 9, 6) && s[15] == 'Z') {
        memcpy(d, s, 8);
        memcpy(d + 8, s + 9, 6);
    } else if (len == 20 && all_digits(s, 4) && s[4] == '-' && all_digits(s + 5, 2) && s[7] == '-' &&
               all_digits(s + 8, 2) && s[10] == 'T' && all_digits(s + 11, 2) && s[13] == ':' &&
               all_digits(s + 14, 2) && s[16] == ':' && all_digits(s + 17, 2) && s[19] == 'Z') {
        memcpy(d, s, 4);
        memcpy(d + 4, s + 5, 2);
        memcpy(d + 6, s + 8, 2);
        memcpy(d + 8, s + 11, 2);
        memcpy(d + 10, s + 14, 2);
        memcpy(d + 12, s + 17, 2);
    } else {
        return -1;
    }
    struct tm want = {0}, tm, back;
    want.tm_year = two(d) * 100 + two(d + 2) - 1900;
    want.tm_mon = two(d + 4) - 1;
    want.tm_mday = two(d + 6);
    want.tm_hour = two(d + 8);
    want.tm_min = two(d + 10);
    want.tm_sec = two(d + 12);
    tm = want; /* timegm normalises its argument */
    time_t t = timegm(&tm);
    /* reject 2015-02-30 and friends: the date must round-trip unchanged */
    if (t == (time_t)-1 || gmtime_r(&t, &back) == NULL || back.tm_year != want.tm_year ||
        back.tm_mon != want.tm_mon || back.tm_mday != want.tm_mday || back.tm_hour != want.tm_hour ||
        back.tm_min != want.tm_min || back.tm_sec != want.tm_sec)
        return -1;
    *out = t;
    return 0;
}

static time_t check_time(lua_State *L, const char *field) {
    time_t now = 0;
    int t = lua_getfield(L, 1, field);
    if (t == LUA_TNIL) {
        now = time(NULL);
    } else if (t == LUA_TNUMBER) {
        int isint;
        lua_Integer i = lua_tointegerx(L, -1, &isint);
        char d[17];
        if (!isint || i < 0 || (lua_Integer)(time_t)i != i || format_date((time_t)i, d) < 0)
            field_error(L, field, "integer epoch seconds (years 1970-9999) expected");
        now = (time_t)i;
    } else if (t == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        if (parse_time(s, len, &now) < 0)
            field_error(L, field, "\"YYYYMMDDTHHMMSSZ\" or \"YYYY-MM-DDTHH:MM:SSZ\" expected");
    } else {
        field_error(L, field, "epoch seconds or a UTC time string expected");
    }
    lua_pop(L, 1);
    return now;
}

/* Converts the value at the top to a string, moves it into the anchor table (so the pointer stays
 * valid) and returns it. */
static const char *anchor_string(lua_State *L, int anchor, int *nanchor, const char *field, int allow_nil) {
    int t = lua_type(L, -1);
    if (t == LUA_TNIL && allow_nil) {
        lua_pop(L, 1);
        return "";
    }
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
        field_error(L, field, lua_pushfstring(L, "strings expected, got %s", luaL_typename(L, -1)));
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    if (strlen(s) != len)
        field_error(L, field, "embedded zero byte");
    lua_rawseti(L, anchor, ++*nanchor);
    return s;
}

/* Reads field `field` of table 1: either a list of {name, value} pairs or a map name -> value.
 * Returns a sigv4_kv array held by a userdata left on the stack (so an error frees it). */
static sigv4_kv *check_kvs(lua_State *L, const char *field, int anchor, int *nanchor, size_t *n,
                           int is_headers) {
    *n = 0;
    int t = lua_getfield(L, 1, field); /* tbl */
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        lua_newuserdatauv(L, 0, 0);
        return NULL;
    }
    if (t != LUA_TTABLE)
        field_error(L, field, lua_pushfstring(L, "table expected, got %s", luaL_typename(L, -1)));
    int tbl = lua_gettop(L);
    size_t count = 0;
    lua_pushnil(L);
    while (lua_next(L, tbl)) {
        count++;
        lua_pop(L, 1);
    }
    if (count > SIZE_MAX / sizeof(sigv4_kv))
        field_error(L, field, "too many entries");
    sigv4_kv *kv = lua_newuserdatauv(L, count * sizeof *kv, 0); /* tbl kv */
    lua_pushnil(L);
    while (lua_next(L, tbl)) { /* tbl kv key value */
        const char *name, *value;
        if (lua_type(L, -2) == LUA_TNUMBER) {
            if (lua_type(L, -1) != LUA_TTABLE)
                field_error(L, field, "list entries must be {name, value} pairs");
            lua_geti(L, -1, 1);
            name = anchor_string(L, anchor, nanchor, field, 0);
            lua_geti(L, -1, 2);
            value = anchor_string(L, anchor, nanchor, field, 1);
        } else if (lua_type(L, -2) == LUA_TSTRING) {
            lua_pushvalue(L, -2);
            name = anchor_string(L, anchor, nanchor, field, 0);
            lua_pushvalue(L, -1);
            value = anchor_string(L, anchor, nanchor, field, 0);
        } else {
            field_error(L, field, "keys must be strings or list indices");
        }
        if (is_headers) {
            if (name[0] == '\0' || strpbrk(name, ":\r\n \t") != NULL)
                field_error(L, field, "header names must be non-empty tokens");
            if (strpbrk(value, "\r\n") != NULL)
                field_error(L, field, "header values must not contain CR or LF");
        }
        kv[*n].name = name;
        kv[*n].value = value;
        ++*n;
        lua_pop(L, 1);
    }
    lua_remove(L, tbl); /* kv */
    return kv;
}

static void set_string(lua_State *L, const char *field, const char *s) {
    if (s == NULL)
        return;
    lua_pushstring(L, s);
    lua_setfield(L, -2, field);
}

/* sigv4.sign{method, path, query, headers, payload_hash | body, access_key, secret_key,
 *            session_token, region, service, time, s3, normalize, path_encoded, sign_body,
 *            omit_session_token, expires} -> {canonical_request, string_to_sign, signature,
 *            authorization, query, amz_date, path, signed_headers, credential_scope, add_headers} */
static int l_sign(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    sigv4_request req = {0};
    size_t len;
    char body_hash[65];

    lua_newtable(L); /* anchor for converted strings */
    int anchor = lua_gettop(L), nanchor = 0;

    req.method = req_string(L, "method");
    for (const char *m = req.method; *m; m++)
        if (*m < 'A' || *m > 'Z')
            field_error(L, "method", "upper-case HTTP method expected");
    req.path = opt_string(L, "path", &len);
    if (req.path == NULL)
        req.path = "/";
    else if (req.path[0] != '/' || strlen(req.path) != len)
        field_error(L, "path", "absolute path (starting with '/') expected");
    req.access_key = req_string(L, "access_key");
    req.secret_key = req_string(L, "secret_key");
    req.session_token = opt_string(L, "session_token", &len);
    if (req.session_token && strlen(req.session_token) != len)
        field_error(L, "session_token", "embedded zero byte");
    req.region = req_string(L, "region");
    req.service = req_string(L, "service");
    req.now = check_time(L, "time");
    req.s3 = opt_bool(L, "s3", 0);
    req.no_normalize = !opt_bool(L, "normalize", !req.s3);
    if (req.s3 && !req.no_normalize)
        field_error(L, "normalize", "S3 paths are never normalised");
    req.path_encoded = opt_bool(L, "path_encoded", 0);
    req.sign_body = opt_bool(L, "sign_body", 0);
    req.omit_session_token = opt_bool(L, "omit_session_token", 0);

    const char *payload = opt_string(L, "payload_hash", &len);
    size_t blen;
    const char *body = opt_string(L, "body", &blen);
    if (payload && body)
        field_error(L, "body", "give either body or payload_hash, not both");
    if (payload && (len == 0 || strlen(payload) != len || strpbrk(payload, "\r\n") != NULL))
        field_error(L, "payload_hash", "hex sha256 or a token such as \"UNSIGNED-PAYLOAD\" expected");
    if (body) {
        sigv4_sha256_hex(body, blen, body_hash);
        payload = body_hash;
    }
    req.payload_hash = payload;

    int t = lua_getfield(L, 1, "expires");
    if (t != LUA_TNIL) {
        int isint;
        lua_Integer e = lua_tointegerx(L, -1, &isint);
        if (t != LUA_TNUMBER || !isint || e < 1 || e > MAX_EXPIRES)
            field_error(L, "expires", "integer seconds in 1..604800 expected");
        req.expires = (long)e;
    }
    lua_pop(L, 1);

    req.query = check_kvs(L, "query", anchor, &nanchor, &req.nquery, 0);
    req.headers = check_kvs(L, "headers", anchor, &nanchor, &req.nheaders, 1);
    if (!header_given(&req, "host"))
        field_error(L, "headers", "a host header is required");

    sigv4_result *res = new_result_box(L); /* ... box */
    if (sigv4_sign(&req, res) < 0)
        return luaL_error(L, "sigv4.sign: not enough memory");

    lua_createtable(L, 0, 12); /* box out */
    set_string(L, "canonical_request", res->canonical_request);
    set_string(L, "string_to_sign", res->string_to_sign);
    set_string(L, "signature", res->signature);
    set_string(L, "authorization", res->authorization);
    set_string(L, "query", res->query);
    set_string(L, "amz_date", res->amz_date);
    set_string(L, "path", res->encoded_path);
    set_string(L, "signed_headers", res->signed_headers);
    set_string(L, "credential_scope", res->credential_scope);
    lua_createtable(L, (int)res->nadd_headers, 0); /* box out add */
    for (size_t i = 0; i < res->nadd_headers; i++) {
        lua_createtable(L, 2, 0);
        lua_pushstring(L, res->add_headers[i].name);
        lua_rawseti(L, -2, 1);
        lua_pushstring(L, res->add_headers[i].value);
        lua_rawseti(L, -2, 2);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "add_headers");
    sigv4_result_free(res); /* the box's __gc is then a no-op */
    return 1;
}

/* sigv4.sign_chunk{secret_key, region, service, time, previous_signature, chunk_sha256 | chunk}
 * -> {string_to_sign, signature}: aws-chunked (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) chunk signing. */
static int l_sign_chunk(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    size_t len;
    char hash[65];
    const char *secret = req_string(L, "secret_key");
    const char *region = req_string(L, "region");
    const char *service = req_string(L, "service");
    time_t now = check_time(L, "time");
    const char *prev = req_string(L, "previous_signature");
    const char *chunk_hash = opt_string(L, "chunk_sha256", &len);
    const char *chunk = opt_string(L, "chunk", &len);
    if ((chunk_hash == NULL) == (chunk == NULL))
        field_error(L, "chunk", "give exactly one of chunk or chunk_sha256");
    if (chunk) {
        sigv4_sha256_hex(chunk, len, hash);
        chunk_hash = hash;
    }
    sigv4_result *box = new_result_box(L); /* owns the string to sign until pushed */
    char sig[65];
    if (sigv4_sign_chunk(secret, region, service, now, prev, chunk_hash, &box->string_to_sign, sig) < 0)
        return luaL_error(L, "sigv4.sign_chunk: not enough memory");
    lua_createtable(L, 0, 2);
    set_string(L, "string_to_sign", box->string_to_sign);
    set_string(L, "signature", sig);
    sigv4_result_free(box);
    return 1;
}

/* sigv4.sha256_hex(s) -> lower-case hex */
static int l_sha256_hex(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char hex[65];
    sigv4_sha256_hex(s, len, hex);
    lua_pushstring(L, hex);
    return 1;
}

/* sigv4.hmac_sha256(key, msg) -> 32 raw bytes */
static int l_hmac_sha256(lua_State *L) {
    size_t klen, mlen;
    const char *k = luaL_checklstring(L, 1, &klen);
    const char *m = luaL_checklstring(L, 2, &mlen);
    unsigned char mac[32];
    sigv4_hmac_sha256(k, klen, m, mlen, mac);
    lua_pushlstring(L, (const char *)mac, sizeof mac);
    return 1;
}

/* sigv4.uri_encode(s [, keep_slash]) -> "%XX" for every byte outside A-Za-z0-9-._~ (and '/') */
static int l_uri_encode(lua_State *L) {
    static const char hex[] = "0123456789ABCDEF";
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    int keep_slash = 0;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TBOOLEAN);
        keep_slash = lua_toboolean(L, 2);
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (unreserved(c) || (keep_slash && c == '/')) {
            luaL_addchar(&b, (char)c);
        } else {
            luaL_addchar(&b, '%');
            luaL_addchar(&b, hex[c >> 4]);
            luaL_addchar(&b, hex[c & 15]);
        }
    }
    luaL_pushresult(&b);
    return 1;
}

static const luaL_Reg sigv4_funcs[] = {
    {"hmac_sha256", l_hmac_sha256},
    {"sha256_hex", l_sha256_hex},
    {"sign", l_sign},
    {"sign_chunk", l_sign_chunk},
    {"uri_encode", l_uri_encode},
    {NULL, NULL},
};

int luaopen_resclean_sigv4(lua_State *L) {
    luaL_newlib(L, sigv4_funcs);
    return 1;
}
