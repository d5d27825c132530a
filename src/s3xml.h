/*
 * The XML of S3 (expat): the replies resclean reads (an <Error> document, DeleteResult,
 * ListBucketResult) and the one request body it writes (DeleteObjects). No Lua and no
 * network, so spec/fuzz links it alone.
 *
 * The replies are read strictly: no DTD or entities, at most 16 levels, no text next to
 * child elements. A reply that is not what it should be is an error, never a guess.
 */
#ifndef RESCLEAN_S3XML_H
#define RESCLEAN_S3XML_H
#include <stddef.h>

#include "buf.h"

#define S3XML_NS "http://s3.amazonaws.com/doc/2006-03-01/"

/* ---- <Error><Code/><Message/><RequestId/></Error> */

typedef struct s3xml_error {
    char code[64], message[512], request_id[128]; /* truncated to fit, "" when absent */
} s3xml_error;

/* 0 when data is an <Error> document with a Code, -1 otherwise (e zeroed first). */
int s3xml_parse_error(const char *data, size_t len, s3xml_error *e);

/* ---- DeleteObjects */

/* What happened to one key of a DeleteObjects request. */
enum s3xml_key_state {
    S3XML_KEY_PENDING,      /* not (yet) mentioned: the state before a reply is applied */
    S3XML_KEY_DELETED,      /* listed in <Deleted> (or, Quiet, not listed as an <Error>) */
    S3XML_KEY_ERROR,        /* listed in an <Error>: code and message say why */
    S3XML_KEY_FAILED,       /* set by the caller: the request failed or its reply is untrusted */
    S3XML_KEY_NOT_IN_REPLY, /* a well-formed, non-Quiet reply does not mention it */
};

typedef struct s3xml_key {
    const char *s; /* the key's bytes (not owned) */
    size_t len;
    size_t req; /* for the caller: the request that carries it */
    enum s3xml_key_state state;
    char code[64], message[256]; /* S3XML_KEY_ERROR (or set by the caller) */
} s3xml_key;

/* Can XML 1.0 carry this key unchanged through the request and the reply? Valid UTF-8,
 * XML Char, and no control characters (a parser may normalise \r and \t\n). */
int s3xml_key_safe(const unsigned char *s, size_t n);

/* qsort/bsearch order of s3xml_key pointers: bytes, then length. */
int s3xml_key_cmp(const void *a, const void *b);

/* Append the DeleteObjects body for keys[0..n) (all s3xml_key_safe) to b, in that order. */
void s3xml_delete_request(buf *b, s3xml_key *const *keys, size_t n, int quiet);

/* Apply a DeleteObjects reply to the keys of its request (order: sorted by s3xml_key_cmp,
 * states PENDING). A key is DELETED only when the reply lists it in <Deleted> (or, Quiet,
 * does not list it as an <Error>); listed errors are ERROR (an error wins over a <Deleted>
 * for the same key), keys not mentioned NOT_IN_REPLY. 0, or -1 when the reply is not a
 * well-formed DeleteResult, or names a key the request did not carry (it answers something
 * else): the states then mean nothing and no key counts as deleted. */
int s3xml_delete_result(const char *body, size_t len, s3xml_key **order, size_t n, int quiet);

/* ---- ListObjectsV2 */

typedef struct s3xml_entry {
    char *key;
    size_t keylen;
    long long size;
    int has_size;
    char *last_modified, *etag;
    double mtime; /* last_modified in epoch seconds (sigv4_parse_iso8601), when has_mtime */
    int has_mtime;
} s3xml_entry;

typedef struct s3xml_list {
    s3xml_entry *e;
    size_t n, cap;
    char **prefixes;
    size_t *prefixlens;
    size_t np, pcap;
    int truncated, url_encoded;
    char *next_token;
    /* while parsing */
    s3xml_entry cur;
    char *cur_prefix;
    size_t cur_prefixlen;
} s3xml_list;

/* Parse a ListBucketResult into l (zeroed by the caller), keys and prefixes decoded
 * (encoding-type=url). 0, or -1 when malformed (a truncated listing must carry its
 * continuation token). s3xml_list_free() frees what it holds either way. */
int s3xml_list_parse(s3xml_list *l, const char *body, size_t len);
void s3xml_list_free(s3xml_list *l); /* l itself too; NULL is fine */

#endif
