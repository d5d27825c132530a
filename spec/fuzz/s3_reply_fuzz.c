/*
 * libFuzzer harness: everything else resclean reads from an S3 server. The same bytes go to
 * the ListObjectsV2 parser (with encoding-type=url decoding) and the <Error> document parser
 * of src/s3xml.c, and to the response-header callback of src/http.c. No crash, leak or undefined behaviour is allowed, and
 * a parsed listing must be self-consistent (lengths, a token when truncated).
 *
 * It links src/s3xml.c, src/http.c and src/buf.c: no Lua, and nothing is sent.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/http.h"
#include "../../src/s3xml.h"

static void parse_list(const char *data, size_t len) {
    s3xml_list *l = calloc(1, sizeof *l);
    if (l == NULL) abort();
    if (s3xml_list_parse(l, data, len) == 0) {
        if (l->truncated && l->next_token == NULL) abort();
        for (size_t i = 0; i < l->n; i++) {
            if (l->e[i].key == NULL || l->e[i].key[l->e[i].keylen] != '\0') abort();
            if (l->e[i].has_size && l->e[i].size < 0) abort();
        }
        for (size_t i = 0; i < l->np; i++)
            if (l->prefixes[i] == NULL || l->prefixes[i][l->prefixlens[i]] != '\0') abort();
    }
    s3xml_list_free(l);
}

static void parse_error(const char *data, size_t len) {
    s3xml_error e;
    if (s3xml_parse_error(data, len, &e) == 0) {
        if (e.code[0] == '\0' || strlen(e.code) >= sizeof e.code) abort();
        if (strlen(e.message) >= sizeof e.message || strlen(e.request_id) >= sizeof e.request_id) abort();
    }
}

/* Feed the bytes to the header callback one line at a time, as curl does. */
static void parse_headers(const char *data, size_t len) {
    http_req r;
    memset(&r, 0, sizeof r);
    r.id_header = "x-amz-request-id"; /* as s3.c's client asks */
    size_t i = 0;
    while (i < len) {
        const char *nl = memchr(data + i, '\n', len - i);
        size_t n = nl ? (size_t)(nl - (data + i)) + 1 : len - i;
        char *line = malloc(n); /* an exact-size copy, so ASan sees any overread */
        if (line == NULL) abort();
        memcpy(line, data + i, n);
        /* 0 stops the transfer: only for no memory, or a Content-Length over the limit */
        if (http_on_header(line, 1, n, &r) != n && !r.oom && !r.too_large) abort();
        free(line);
        i += n;
    }
    if (r.has_len && r.h_len < 0) abort();
    http_req_reset(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *copy = malloc(size + 1); /* parsers get a NUL-terminated buffer, as from a buf */
    if (copy == NULL) abort();
    memcpy(copy, data, size);
    copy[size] = '\0';
    parse_list(copy, size);
    parse_error(copy, size);
    parse_headers(copy, size);
    free(copy);
    return 0;
}
