/*
 * A growable byte buffer, always NUL-terminated, for everything the network primitives
 * build (URLs, headers, XML, canonical requests) and read (replies).
 *
 * One failure convention: an append that cannot get memory marks the buffer failed and
 * every later append is a no-op, so a caller appends freely and checks once, with
 * buf_failed() or when buf_take() returns NULL. buf_free() is always safe.
 */
#ifndef RESCLEAN_BUF_H
#define RESCLEAN_BUF_H
#include <stddef.h>

typedef struct buf {
    char *p;    /* NULL until the first append; then NUL-terminated */
    size_t len; /* bytes in p, not counting the NUL */
    size_t cap;
    int oom; /* an append failed: contents are incomplete */
} buf;

/* Make room for extra more bytes (and the NUL). */
void buf_reserve(buf *b, size_t extra);
void buf_add(buf *b, const void *s, size_t n);
void buf_addstr(buf *b, const char *s);
/* Empty it, keeping its memory (and its failure, if any). */
void buf_clear(buf *b);
/* The contents (malloc'd, "" when empty; the caller frees), or NULL after a failure;
 * either way the buffer is empty and reusable afterwards. */
char *buf_take(buf *b);
void buf_free(buf *b);

/* A NUL-terminated copy of s[0..n) (the caller frees), or NULL without memory. */
char *buf_dupn(const char *s, size_t n);

static inline int buf_failed(const buf *b) {
    return b->oom;
}

static inline void buf_addc(buf *b, char c) {
    if (b->len + 1 < b->cap && !b->oom) { /* the common case, without a call */
        b->p[b->len++] = c;
        b->p[b->len] = '\0';
    } else {
        buf_add(b, &c, 1);
    }
}

#endif
