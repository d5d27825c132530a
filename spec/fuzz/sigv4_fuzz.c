/*
 * libFuzzer harness: SigV4 URI encoding and canonicalisation of arbitrary bytes (src/sigv4.c).
 *
 * Properties:
 *  - sigv4_uri_encode keeps exactly A-Za-z0-9-._~ (and '/' for paths), writes every other
 *    byte as %XX in upper case, and decoding gives back the input;
 *  - for S3 (no normalisation) the canonical URI is the wire path, and decodes to the path;
 *  - the canonical query is sorted and fully encoded; signing is deterministic;
 *  - the generic (normalising) path never crashes, with or without presigning.
 *
 * Input: fields separated by NUL bytes: path, then query name/value pairs, then a header
 * value; missing fields are empty.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/sigv4.h"

static int hexv(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int unreserved(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

static void fail(const char *what) {
    fprintf(stderr, "sigv4 property violated: %s\n", what);
    abort();
}

/* Check enc is the canonical encoding of s[0..n), keep_slash for paths. */
static void check_encoding(const char *enc, const char *s, size_t n, int keep_slash) {
    size_t j = 0, el = strlen(enc);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (unreserved(c) || (keep_slash && c == '/')) {
            if (j >= el || (unsigned char)enc[j] != c) fail("kept byte differs");
            j++;
        } else {
            if (j + 3 > el || enc[j] != '%' || hexv(enc[j + 1]) < 0 || hexv(enc[j + 2]) < 0 ||
                hexv(enc[j + 1]) * 16 + hexv(enc[j + 2]) != c)
                fail("byte not encoded as %XX in upper case");
            j += 3;
        }
    }
    if (j != el) fail("encoding longer than the input accounts for");
}

#define MAXF 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* 1. the encoder on the raw bytes, NULs included */
    for (int ks = 0; ks <= 1; ks++) {
        char *enc = sigv4_uri_encode((const char *)data, size, ks);
        if (enc == NULL) fail("encode returned NULL");
        check_encoding(enc, (const char *)data, size, ks);
        free(enc);
    }

    /* 2. split into NUL-separated fields */
    char *copy = malloc(size + 1);
    if (copy == NULL) abort();
    memcpy(copy, data, size);
    copy[size] = '\0';
    const char *f[MAXF];
    size_t nf = 0;
    for (size_t i = 0; i <= size && nf < MAXF;) {
        f[nf++] = copy + i;
        i += strlen(copy + i) + 1;
    }
    while (nf < 4) f[nf++] = "";

    /* "/bucket/" + key, as s3req.c builds a path-style request */
    size_t klen = strlen(f[0]);
    char *path = malloc(klen + 9);
    if (path == NULL) abort();
    memcpy(path, "/bucket/", 8);
    memcpy(path + 8, f[0], klen + 1);

    sigv4_kv query[MAXF];
    size_t nq = 0;
    for (size_t i = 1; i + 1 < nf - 1 && nq < MAXF; i += 2) query[nq++] = (sigv4_kv){f[i], f[i + 1]};
    sigv4_kv hdrs[3] = {{"host", "127.0.0.1:9000"}, {"x-amz-meta-v", f[nf - 1]}, {"Content-Type", "a  b "}};

    sigv4_request q;
    memset(&q, 0, sizeof q);
    q.method = "GET";
    q.path = path;
    q.query = query;
    q.nquery = nq;
    q.headers = hdrs;
    q.nheaders = 3;
    q.access_key = "AKIDEXAMPLE";
    q.secret_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    q.region = "us-east-1";
    q.service = "s3";
    q.now = 1440938160;
    q.s3 = 1;

    sigv4_result r1, r2;
    if (sigv4_sign(&q, &r1) != 0) fail("S3 signing failed");
    check_encoding(r1.encoded_path, path, strlen(path), 1);
    /* canonical request line 2 is the wire path */
    const char *l2 = strchr(r1.canonical_request, '\n');
    if (l2 == NULL) fail("canonical request has one line");
    l2++;
    size_t plen = strlen(r1.encoded_path);
    if (strncmp(l2, r1.encoded_path, plen) != 0 || l2[plen] != '\n') fail("canonical URI is not the wire path");
    /* canonical query: encoded pairs, sorted by name */
    const char *cq = l2 + plen + 1, *prev = NULL;
    size_t prevlen = 0;
    while (*cq != '\n' && *cq != '\0') {
        size_t n = strcspn(cq, "&\n"), name = strcspn(cq, "=&\n");
        for (size_t i = 0; i < n; i++)
            if (!unreserved((unsigned char)cq[i]) && cq[i] != '%' && cq[i] != '=') fail("raw byte in query");
        if (prev != NULL) {
            size_t m = prevlen < name ? prevlen : name;
            int c = memcmp(prev, cq, m);
            if (c > 0 || (c == 0 && prevlen > name)) fail("canonical query not sorted by name");
        }
        prev = cq;
        prevlen = name;
        cq += n;
        if (*cq == '&') cq++;
    }
    if (strcmp(r1.query, "") != 0 && strncmp(r1.query, l2 + plen + 1, strlen(r1.query)) != 0)
        fail("query sent differs from the canonical query");
    if (strlen(r1.signature) != 64) fail("signature is not 64 hex digits");
    if (sigv4_sign(&q, &r2) != 0) fail("second signing failed");
    if (strcmp(r1.signature, r2.signature) != 0 || strcmp(r1.canonical_request, r2.canonical_request) != 0)
        fail("signing is not deterministic");
    sigv4_result_free(&r1);
    sigv4_result_free(&r2);

    /* 3. generic service: normalised path, then presigned */
    path[0] = '/';
    q.s3 = 0;
    q.service = "execute-api";
    if (sigv4_sign(&q, &r1) == 0) sigv4_result_free(&r1);
    q.expires = 300;
    q.session_token = f[nf - 1];
    if (sigv4_sign(&q, &r1) == 0) {
        if (strstr(r1.query, "X-Amz-Signature=") == NULL) fail("presigned query without a signature");
        sigv4_result_free(&r1);
    }
    free(path);
    free(copy);
    return 0;
}
