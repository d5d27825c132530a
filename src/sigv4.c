/*
 * AWS Signature Version 4 (HMAC-SHA256) with OpenSSL: header signing and presigned URLs.
 * Pure C, no Lua (the binding is sigv4_lua.c): the time is an input, nothing is logged, and
 * secret-derived key material is cleansed.
 *
 * sigv4_sign() follows the steps of AWS's "Create a signed AWS API request"
 * (https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html), one
 * function each: canonical URI, canonical query string, canonical headers (and signed
 * headers), canonical request, string to sign, signature, then the Authorization header or
 * the presigned query.
 */
#define _DEFAULT_SOURCE /* gmtime_r, timegm */
#include "sigv4.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

#define ALGORITHM "AWS4-HMAC-SHA256"

/* ---------------------------------------------------------------- encoding */

int sigv4_unreserved(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

static void buf_encode(buf *b, const char *s, size_t n, int keep_slash) {
    static const char hex[] = "0123456789ABCDEF";
    buf_reserve(b, n);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (sigv4_unreserved(c) || (keep_slash && c == '/')) {
            buf_addc(b, (char)c);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            buf_add(b, e, 3);
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

/* ---------------------------------------------------------------- hashing */

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

int sigv4_format_date(time_t now, char amz_date[17]) {
    struct tm tm;
    if (gmtime_r(&now, &tm) == NULL || tm.tm_year < -1900 || tm.tm_year > 9999 - 1900)
        return -1;
    return strftime(amz_date, 17, "%Y%m%dT%H%M%SZ", &tm) == 16 ? 0 : -1;
}

/* ---------------------------------------------------------------- reading times */

/* The n digits at s as a number; -1 when one is not a digit. */
static int digits(const char *s, size_t n) {
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* Epoch seconds of the UTC time whose fields (YYYY MM DD hh mm ss) start at s + at[0..5]; -1
 * on a non-digit or a time that does not exist (2015-02-30 does not round-trip). */
static int civil_time(const char *s, const int at[6], time_t *out) {
    int f[6];
    for (int i = 0; i < 6; i++)
        if ((f[i] = digits(s + at[i], i == 0 ? 4 : 2)) < 0)
            return -1;
    struct tm want = {0}, tm, back;
    want.tm_year = f[0] - 1900;
    want.tm_mon = f[1] - 1;
    want.tm_mday = f[2];
    want.tm_hour = f[3];
    want.tm_min = f[4];
    want.tm_sec = f[5];
    tm = want; /* timegm normalises its argument */
    time_t t = timegm(&tm);
    if (t == (time_t)-1 || gmtime_r(&t, &back) == NULL || back.tm_year != want.tm_year ||
        back.tm_mon != want.tm_mon || back.tm_mday != want.tm_mday || back.tm_hour != want.tm_hour ||
        back.tm_min != want.tm_min || back.tm_sec != want.tm_sec)
        return -1;
    *out = t;
    return 0;
}

static const int EXTENDED[6] = {0, 5, 8, 11, 14, 17}; /* 2015-08-30T12:36:00 */

int sigv4_parse_time(const char *s, size_t len, time_t *out) {
    static const int compact[6] = {0, 4, 6, 9, 11, 13}; /* 20150830T123600Z */
    if (len == 16 && s[8] == 'T' && s[15] == 'Z')
        return civil_time(s, compact, out);
    if (len == 20 && s[4] == '-' && s[7] == '-' && s[10] == 'T' && s[13] == ':' && s[16] == ':' &&
        s[19] == 'Z')
        return civil_time(s, EXTENDED, out);
    return -1;
}

/* The zone after the seconds (its n bytes at s): "", "Z" or an offset "+01:00" ("+0100") ->
 * seconds east of UTC; -1 when it is none of these. */
static int zone_offset(const char *s, size_t n, long *east) {
    *east = 0;
    if (n == 0 || (n == 1 && (s[0] == 'Z' || s[0] == 'z')))
        return 0;
    if ((n != 5 && n != 6) || (s[0] != '+' && s[0] != '-') || (n == 6 && s[3] != ':'))
        return -1;
    int h = digits(s + 1, 2), m = digits(s + n - 2, 2);
    if (h < 0 || m < 0)
        return -1;
    *east = (h * 3600L + m * 60L) * (s[0] == '-' ? -1 : 1);
    return 0;
}

int sigv4_parse_iso8601(const char *s, size_t len, double *out) {
    time_t t;
    if (len < 19 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
        s[13] != ':' || s[16] != ':' || civil_time(s, EXTENDED, &t) < 0)
        return -1;
    size_t i = 19;
    double frac = 0;
    if (i < len && s[i] == '.') {
        long long num = 0, den = 1;
        for (i++; i < len && s[i] >= '0' && s[i] <= '9'; i++) {
            if (den < 1000000000LL) { /* nanoseconds are enough; further digits are read, not kept */
                num = num * 10 + (s[i] - '0');
                den *= 10;
            }
        }
        frac = (double)num / (double)den;
    }
    long east;
    if (zone_offset(s + i, len - i, &east) < 0)
        return -1;
    *out = (double)t + frac - (double)east;
    return 0;
}

/* ---------------------------------------------------------------- one signing */

typedef struct qent {
    char *k, *v; /* encoded */
} qent;

typedef struct hent {
    char *name;  /* lower-cased */
    char *value; /* trimmed, inner runs of blanks collapsed */
    size_t idx;  /* input order, so duplicates keep it */
} hent;

/* The state of one sigv4_sign() call: its inputs, what the steps build, what they share. */
typedef struct signing {
    const sigv4_request *r;
    sigv4_result *out;
    const char *path;    /* "/" when none given */
    const char *token;   /* NULL when none (or empty) */
    const char *payload; /* payload hash */
    int presign, sign_token;
    char date8[9];
    hent *h;
    size_t nh;
    qent *q;
    size_t nq;
    buf query;   /* the canonical query string, then (presigning) what is sent */
    buf headers; /* the canonical headers block */
    unsigned char key[32];
} signing;

static void signing_free(signing *s) {
    OPENSSL_cleanse(s->key, sizeof s->key);
    for (size_t i = 0; i < s->nq; i++) {
        free(s->q[i].k);
        free(s->q[i].v);
    }
    free(s->q);
    for (size_t i = 0; i < s->nh; i++) {
        free(s->h[i].name);
        free(s->h[i].value);
    }
    free(s->h);
    buf_free(&s->query);
    buf_free(&s->headers);
}

int sigv4_has_header(const sigv4_request *r, const char *lname) {
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

static int request_valid(const sigv4_request *r) {
    return r->method != NULL && r->access_key != NULL && r->secret_key != NULL && r->region != NULL &&
           r->service != NULL && (r->nquery == 0 || r->query != NULL) && r->headers != NULL &&
           sigv4_has_header(r, "host") && r->expires >= 0 &&
           (r->path == NULL || r->path[0] == '\0' || r->path[0] == '/');
}

/* Date, credential scope, the wire path; the private copies add_headers points at. */
static int credential_scope(signing *s) {
    const sigv4_request *r = s->r;
    sigv4_result *out = s->out;
    if (sigv4_format_date(r->now, out->amz_date) < 0)
        return -1;
    memcpy(s->date8, out->amz_date, 8);
    s->date8[8] = '\0';
    out->payload_hash_ = buf_dupn(s->payload, strlen(s->payload));
    out->session_token_ = s->token ? buf_dupn(s->token, strlen(s->token)) : NULL;
    if (out->payload_hash_ == NULL || (s->token && out->session_token_ == NULL))
        return -1;
    buf b = {0};
    buf_addstr(&b, s->date8);
    buf_addc(&b, '/');
    buf_addstr(&b, r->region);
    buf_addc(&b, '/');
    buf_addstr(&b, r->service);
    buf_addstr(&b, "/aws4_request");
    if ((out->credential_scope = buf_take(&b)) == NULL)
        return -1;
    if (r->path_encoded)
        buf_addstr(&b, s->path);
    else
        buf_encode(&b, s->path, strlen(s->path), 1);
    return (out->encoded_path = buf_take(&b)) == NULL ? -1 : 0;
}

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
            buf_add(&o, path + i, sl);
        }
        i = j + 1;
    }
    if (buf_failed(&o)) {
        b->oom = 1;
    } else if (o.len == 0) {
        buf_addc(b, '/');
    } else {
        buf_add(b, o.p, o.len);
        if (path[n - 1] == '/')
            buf_addc(b, '/');
    }
    buf_free(&o);
}

/* Step 1, canonical URI: S3 signs the wire path as is; other services normalise it (unless
 * told not to) and encode it once more. */
static void canonical_uri(signing *s, buf *c) {
    const char *wire = s->out->encoded_path;
    if (s->r->s3) {
        buf_addstr(c, wire);
    } else if (s->r->no_normalize) {
        buf_encode(c, wire, strlen(wire), 1);
    } else {
        buf np = {0};
        buf_normalized_path(&np, wire);
        if (buf_failed(&np))
            c->oom = 1;
        else
            buf_encode(c, np.p, np.len, 1);
        buf_free(&np);
    }
}

static int qent_cmp(const void *a, const void *b) {
    const qent *x = a, *y = b;
    int c = strcmp(x->k, y->k);
    return c ? c : strcmp(x->v, y->v);
}

static int add_query(signing *s, const char *k, const char *v, int encode_name) {
    qent *e = &s->q[s->nq++];
    e->k = encode_name ? sigv4_uri_encode(k, strlen(k), 0) : buf_dupn(k, strlen(k));
    e->v = sigv4_uri_encode(v, strlen(v), 0);
    return e->k == NULL || e->v == NULL ? -1 : 0;
}

/* The X-Amz-* parameters of a presigned URL (they are signed too). */
static int presign_query(signing *s) {
    const sigv4_request *r = s->r;
    char expires[24];
    buf cred = {0};
    buf_addstr(&cred, r->access_key);
    buf_addc(&cred, '/');
    buf_addstr(&cred, s->out->credential_scope);
    char *credential = buf_take(&cred);
    if (credential == NULL)
        return -1;
    snprintf(expires, sizeof expires, "%ld", r->expires);
    int rc = add_query(s, "X-Amz-Algorithm", ALGORITHM, 0) ||
             add_query(s, "X-Amz-Credential", credential, 0) ||
             add_query(s, "X-Amz-Date", s->out->amz_date, 0) ||
             add_query(s, "X-Amz-Expires", expires, 0) ||
             add_query(s, "X-Amz-SignedHeaders", s->out->signed_headers, 0) ||
             (s->token && !r->omit_session_token && add_query(s, "X-Amz-Security-Token", s->token, 0));
    free(credential);
    return rc ? -1 : 0;
}

/* Step 2, canonical query string: every name and value encoded, sorted by name then value. */
static int canonical_query(signing *s) {
    const sigv4_request *r = s->r;
    if ((s->q = calloc(r->nquery + 6, sizeof *s->q)) == NULL)
        return -1;
    for (size_t i = 0; i < r->nquery; i++) {
        const char *k = r->query[i].name ? r->query[i].name : "";
        const char *v = r->query[i].value ? r->query[i].value : "";
        if (add_query(s, k, v, 1) != 0)
            return -1;
    }
    if (s->presign && presign_query(s) != 0)
        return -1;
    qsort(s->q, s->nq, sizeof *s->q, qent_cmp);
    for (size_t i = 0; i < s->nq; i++) {
        if (i > 0)
            buf_addc(&s->query, '&');
        buf_addstr(&s->query, s->q[i].k);
        buf_addc(&s->query, '=');
        buf_addstr(&s->query, s->q[i].v);
    }
    return buf_failed(&s->query) ? -1 : 0;
}

static int hent_cmp(const void *a, const void *b) {
    const hent *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->idx > y->idx) - (x->idx < y->idx);
}

static int blank(char c) {
    return c == ' ' || c == '\t';
}

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

/* The headers signing adds in header mode: x-amz-date, x-amz-content-sha256 (sign_body),
 * x-amz-security-token (signed unless omit_session_token). */
static void added_headers(signing *s) {
    const sigv4_request *r = s->r;
    sigv4_result *out = s->out;
    if (s->presign)
        return;
    int add_token = s->token && !sigv4_has_header(r, "x-amz-security-token");
    s->sign_token = add_token && !r->omit_session_token;
    if (!sigv4_has_header(r, "x-amz-date"))
        out->add_headers[out->nadd_headers++] = (sigv4_kv){"x-amz-date", out->amz_date};
    if (r->sign_body && !sigv4_has_header(r, "x-amz-content-sha256"))
        out->add_headers[out->nadd_headers++] = (sigv4_kv){"x-amz-content-sha256", out->payload_hash_};
    if (add_token)
        out->add_headers[out->nadd_headers++] = (sigv4_kv){"x-amz-security-token", out->session_token_};
}

/* Step 3, canonical headers and signed headers: names lower-cased and sorted, values trimmed,
 * repeated names joined with ','. */
static int canonical_headers(signing *s) {
    const sigv4_request *r = s->r;
    sigv4_result *out = s->out;
    added_headers(s);
    if ((s->h = calloc(r->nheaders + 3, sizeof *s->h)) == NULL)
        return -1;
    for (size_t i = 0; i < r->nheaders + out->nadd_headers; i++) {
        const sigv4_kv *kv = i < r->nheaders ? &r->headers[i] : &out->add_headers[i - r->nheaders];
        if (kv->name == NULL)
            return -1;
        if (i >= r->nheaders && !s->sign_token && strcmp(kv->name, "x-amz-security-token") == 0)
            continue; /* omit_session_token: sent, not signed */
        hent *e = &s->h[s->nh++];
        e->idx = i;
        e->name = lower_dup(kv->name);
        e->value = trim_dup(kv->value ? kv->value : "");
        if (e->name == NULL || e->value == NULL)
            return -1;
    }
    qsort(s->h, s->nh, sizeof *s->h, hent_cmp);
    buf names = {0};
    for (size_t i = 0; i < s->nh; i++) {
        int repeated = i > 0 && strcmp(s->h[i].name, s->h[i - 1].name) == 0;
        if (repeated) {
            buf_addc(&s->headers, ',');
        } else {
            if (i > 0) {
                buf_addc(&s->headers, '\n');
                buf_addc(&names, ';');
            }
            buf_addstr(&s->headers, s->h[i].name);
            buf_addc(&s->headers, ':');
            buf_addstr(&names, s->h[i].name);
        }
        buf_addstr(&s->headers, s->h[i].value);
    }
    buf_addc(&s->headers, '\n');
    if ((out->signed_headers = buf_take(&names)) == NULL)
        return -1;
    return buf_failed(&s->headers) ? -1 : 0;
}

/* Step 4, canonical request: method, URI, query, headers, signed headers, payload hash. */
static int canonical_request(signing *s) {
    buf c = {0};
    buf_addstr(&c, s->r->method);
    buf_addc(&c, '\n');
    canonical_uri(s, &c);
    buf_addc(&c, '\n');
    buf_add(&c, s->query.p, s->query.len);
    buf_addc(&c, '\n');
    buf_add(&c, s->headers.p, s->headers.len);
    buf_addc(&c, '\n');
    buf_addstr(&c, s->out->signed_headers);
    buf_addc(&c, '\n');
    buf_addstr(&c, s->payload);
    return (s->out->canonical_request = buf_take(&c)) == NULL ? -1 : 0;
}

/* Step 5, string to sign: algorithm, date, scope, hash of the canonical request. */
static int string_to_sign(signing *s) {
    sigv4_result *out = s->out;
    char creq_hash[65];
    sigv4_sha256_hex(out->canonical_request, strlen(out->canonical_request), creq_hash);
    buf b = {0};
    buf_addstr(&b, ALGORITHM "\n");
    buf_addstr(&b, out->amz_date);
    buf_addc(&b, '\n');
    buf_addstr(&b, out->credential_scope);
    buf_addc(&b, '\n');
    buf_addstr(&b, creq_hash);
    return (out->string_to_sign = buf_take(&b)) == NULL ? -1 : 0;
}

/* Step 6, signature: HMAC of the string to sign with the derived key, cached per scope. */
static int signature(signing *s) {
    const sigv4_request *r = s->r;
    sigv4_result *out = s->out;
    sigv4_key_cache *kc = r->key_cache;
    if (kc != NULL && strcmp(kc->scope, out->credential_scope) == 0) {
        memcpy(s->key, kc->key, sizeof s->key);
    } else {
        if (signing_key(r->secret_key, s->date8, r->region, r->service, s->key) < 0)
            return -1;
        if (kc != NULL) {
            size_t n = strlen(out->credential_scope);
            kc->scope[0] = '\0';
            if (n < sizeof kc->scope) { /* a longer scope is never cached */
                memcpy(kc->key, s->key, sizeof s->key);
                memcpy(kc->scope, out->credential_scope, n + 1);
            }
        }
    }
    sign_hex(s->key, out->string_to_sign, out->signature);
    return 0;
}

/* Step 7: the signature goes into the Authorization header, or into the presigned query. */
static int authorization(signing *s) {
    const sigv4_request *r = s->r;
    sigv4_result *out = s->out;
    if (s->presign) {
        buf_addstr(&s->query, s->nq > 0 ? "&X-Amz-Signature=" : "X-Amz-Signature=");
        buf_addstr(&s->query, out->signature);
        if (s->token && r->omit_session_token) {
            buf_addstr(&s->query, "&X-Amz-Security-Token=");
            buf_encode(&s->query, s->token, strlen(s->token), 0);
        }
    } else {
        buf a = {0};
        buf_addstr(&a, ALGORITHM " Credential=");
        buf_addstr(&a, r->access_key);
        buf_addc(&a, '/');
        buf_addstr(&a, out->credential_scope);
        buf_addstr(&a, ", SignedHeaders=");
        buf_addstr(&a, out->signed_headers);
        buf_addstr(&a, ", Signature=");
        buf_addstr(&a, out->signature);
        if ((out->authorization = buf_take(&a)) == NULL)
            return -1;
    }
    return (out->query = buf_take(&s->query)) == NULL ? -1 : 0;
}

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

int sigv4_sign(const sigv4_request *r, sigv4_result *out) {
    memset(out, 0, sizeof *out);
    if (!request_valid(r))
        return -1;
    signing s;
    memset(&s, 0, sizeof s);
    s.r = r;
    s.out = out;
    s.path = (r->path && r->path[0]) ? r->path : "/";
    s.token = (r->session_token && r->session_token[0]) ? r->session_token : NULL;
    s.payload = r->payload_hash ? r->payload_hash : SIGV4_EMPTY_SHA256;
    s.presign = r->expires > 0;
    int rc = credential_scope(&s) || canonical_headers(&s) || canonical_query(&s) ||
                     canonical_request(&s) || string_to_sign(&s) || signature(&s) || authorization(&s)
                 ? -1
                 : 0;
    signing_free(&s);
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
    if (sigv4_format_date(now, amz_date) < 0)
        return -1;
    memcpy(date8, amz_date, 8);
    date8[8] = '\0';
    buf s = {0};
    buf_addstr(&s, ALGORITHM "-PAYLOAD\n");
    buf_addstr(&s, amz_date);
    buf_addc(&s, '\n');
    buf_addstr(&s, date8);
    buf_addc(&s, '/');
    buf_addstr(&s, region);
    buf_addc(&s, '/');
    buf_addstr(&s, service);
    buf_addstr(&s, "/aws4_request\n");
    buf_addstr(&s, previous_signature);
    buf_addstr(&s, "\n" SIGV4_EMPTY_SHA256 "\n");
    buf_addstr(&s, chunk_hash);
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
