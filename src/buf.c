/* buf.h: the growable buffer of the network primitives (one failure convention: sticky). */
#include "buf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void buf_reserve(buf *b, size_t extra) {
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

void buf_add(buf *b, const void *s, size_t n) {
    buf_reserve(b, n);
    if (b->oom)
        return;
    if (n > 0)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void buf_addstr(buf *b, const char *s) {
    buf_add(b, s, strlen(s));
}

void buf_clear(buf *b) {
    b->len = 0;
    if (b->p != NULL)
        b->p[0] = '\0';
}

char *buf_take(buf *b) {
    buf_reserve(b, 0);
    if (b->oom) {
        buf_free(b);
        return NULL;
    }
    b->p[b->len] = '\0';
    char *p = b->p;
    *b = (buf){0};
    return p;
}

void buf_free(buf *b) {
    free(b->p);
    *b = (buf){0};
}

char *buf_dupn(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p != NULL) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}
