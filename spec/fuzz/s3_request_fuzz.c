/*
 * libFuzzer harness: how resclean turns an object key (arbitrary bytes) into a request.
 * s3req_sign() (src/s3req.c) builds the path and URL and signs them (sigv4.c); curl's own URL
 * parser then reads the path back as it would send it (path as is); nothing is sent. Property: the URL's path is "/bucket/" + the key, percent-encoded as SigV4 wants
 * for S3 (A-Za-z0-9-._~ and '/' kept, everything else %XX), and decoding it gives back the
 * exact key, NUL bytes included. A URL that names another key would make the client act on
 * another object (DELETE "a\0b" deleting "a").
 *
 * It links src/s3req.c, src/http.c, src/sigv4.c and src/buf.c: no Lua.
 */
#define _POSIX_C_SOURCE 200809L /* strdup */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "../../src/s3req.h"

static s3_target target;

static void setup(void) {
    memset(&target, 0, sizeof target);
    target.path_style = 1;
    target.authority = strdup("127.0.0.1:9000");
    target.region = strdup("us-east-1");
    target.access_key = strdup("AKIDEXAMPLE");
    target.secret_key = strdup("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
    target.bucket = strdup("bucket");
    if (target.authority == NULL || target.region == NULL || target.access_key == NULL ||
        target.secret_key == NULL || target.bucket == NULL)
        abort();
}

/* The path curl sends for url (CURLOPT_PATH_AS_IS: no dot segments removed) must be the
 * path of the URL as written. */
static void check_curl_path(const char *url) {
    CURLU *u = curl_url();
    char *path = NULL;
    if (u == NULL) abort();
    if (curl_url_set(u, CURLUPART_URL, url, CURLU_PATH_AS_IS) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK) {
        fprintf(stderr, "curl cannot parse %s\n", url);
        abort();
    }
    const char *want = strstr(url, "://") + 3;
    want += strcspn(want, "/");
    size_t wl = strcspn(want, "?");
    if (strlen(path) != wl || memcmp(path, want, wl) != 0) {
        fprintf(stderr, "curl would send the path %s for %s\n", path, url);
        abort();
    }
    curl_free(path);
    curl_url_cleanup(u);
}

static int hexv(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int kept(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~' || c == '/';
}

static void check(const char *url, const char *prefix, const uint8_t *key, size_t len) {
    size_t pl = strlen(prefix);
    if (strncmp(url, prefix, pl) != 0) {
        fprintf(stderr, "URL %s does not start with %s\n", url, prefix);
        abort();
    }
    const char *p = url + pl;
    size_t i = 0;
    for (; *p != '\0' && *p != '?'; i++) {
        int c;
        if (*p == '%') {
            if (hexv(p[1]) < 0 || hexv(p[2]) < 0) abort();
            c = hexv(p[1]) * 16 + hexv(p[2]);
            if (kept((unsigned char)c)) {
                fprintf(stderr, "byte %02x encoded though SigV4 keeps it\n", c);
                abort();
            }
            p += 3;
        } else {
            c = (unsigned char)*p;
            if (!kept((unsigned char)c)) {
                fprintf(stderr, "byte %02x sent raw in %s\n", c, url);
                abort();
            }
            p++;
        }
        if (i >= len || key[i] != c) {
            fprintf(stderr, "URL %s names another key (differs at byte %zu of %zu)\n", url, i, len);
            abort();
        }
    }
    if (i != len) {
        fprintf(stderr, "URL %s names a key of %zu bytes, not %zu\n", url, i, len);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready = 0;
    if (!ready) {
        setup();
        ready = 1;
    }
    if (size == 0) return 0; /* s3req_init refuses empty keys: nothing is signed */
    for (int style = 1; style >= 0; style--) {
        s3_req r;
        s3_signed sg;
        s3req_init(&r, "HEAD", (const char *)data, size);
        target.path_style = style;
        if (s3req_sign(&target, &r, 1440938160, &sg) == 0) {
            check(r.http.url, style ? "http://127.0.0.1:9000/bucket/" : "http://bucket.127.0.0.1:9000/", data,
                  size);
            check_curl_path(r.http.url);
        } /* else out of memory: not a property of the key */
        s3req_signed_free(&sg);
        s3req_free(&r);
    }
    return 0;
}
