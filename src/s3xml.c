/* s3xml.h: the XML S3 speaks, with expat. */
#include "s3xml.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <expat.h>

#include "sigv4.h"

#define XW_MAXDEPTH 16
#define XW_MAXTEXT ((size_t)32 << 20) /* the text of one element; replies are limited alike */

/* ---------------------------------------------------------------- a strict walker */

/* Calls on_start / on_end with the local names (namespaces ignored) and each element's text. */
typedef struct xw {
    XML_Parser p;
    int depth, failed;
    char names[XW_MAXDEPTH][48];          /* names[0]: the root element */
    unsigned char has_child[XW_MAXDEPTH]; /* the element at that depth has a child element */
    buf text;
    void *ud;
    void (*on_start)(struct xw *w, const char *name);
    void (*on_end)(struct xw *w, const char *name, const char *text, size_t len);
} xw;

static void xw_fail(xw *w) {
    w->failed = 1;
    XML_StopParser(w->p, XML_FALSE);
}

static const char *local_name(const char *n) {
    const char *c = strrchr(n, ':');
    return c ? c + 1 : n;
}

/* Only blanks: the text of an element that has child elements (S3 replies have no mixed
 * content; text next to a child means the reply is not what we think it is). */
static int xw_blank(const buf *t) {
    for (size_t i = 0; i < t->len; i++)
        if (t->p[i] != ' ' && t->p[i] != '\t' && t->p[i] != '\r' && t->p[i] != '\n')
            return 0;
    return 1;
}

static void XMLCALL xw_start(void *ud, const XML_Char *name, const XML_Char **attrs) {
    xw *w = ud;
    (void)attrs;
    if (w->failed)
        return;
    if (w->depth >= XW_MAXDEPTH || (w->depth > 0 && !xw_blank(&w->text))) {
        xw_fail(w);
        return;
    }
    if (w->depth > 0)
        w->has_child[w->depth - 1] = 1;
    w->has_child[w->depth] = 0;
    snprintf(w->names[w->depth], sizeof w->names[0], "%s", local_name(name));
    w->depth++;
    buf_clear(&w->text);
    if (w->on_start)
        w->on_start(w, w->names[w->depth - 1]);
}

static void XMLCALL xw_end(void *ud, const XML_Char *name) {
    xw *w = ud;
    (void)name;
    if (w->failed)
        return;
    if (w->has_child[w->depth - 1] && !xw_blank(&w->text)) {
        xw_fail(w);
        return;
    }
    if (w->on_end)
        w->on_end(w, w->names[w->depth - 1], w->text.p ? w->text.p : "", w->text.len);
    w->depth--;
    buf_clear(&w->text);
}

static void XMLCALL xw_chars(void *ud, const XML_Char *s, int len) {
    xw *w = ud;
    if (w->failed || w->depth == 0)
        return;
    if (w->text.len + (size_t)len > XW_MAXTEXT) {
        xw_fail(w);
        return;
    }
    buf_add(&w->text, s, (size_t)len);
    if (buf_failed(&w->text))
        xw_fail(w);
}

static void XMLCALL xw_doctype(void *ud, const XML_Char *name, const XML_Char *sysid,
                               const XML_Char *pubid, int internal) {
    (void)name, (void)sysid, (void)pubid, (void)internal;
    xw_fail(ud); /* S3 replies have no DTD; entities are refused, not expanded */
}

/* Parse a whole document whose root element must be named root. 0 ok, -1 not that. */
static int xw_parse(xw *w, const char *data, size_t len, const char *root) {
    int ok = 0;
    w->p = XML_ParserCreate("UTF-8");
    if (w->p == NULL)
        return -1;
    XML_SetUserData(w->p, w);
    XML_SetElementHandler(w->p, xw_start, xw_end);
    XML_SetCharacterDataHandler(w->p, xw_chars);
    XML_SetStartDoctypeDeclHandler(w->p, xw_doctype);
    if (len <= INT_MAX && XML_Parse(w->p, data ? data : "", (int)len, 1) == XML_STATUS_OK && !w->failed)
        ok = strcmp(w->names[0], root) == 0;
    XML_ParserFree(w->p);
    w->p = NULL;
    buf_free(&w->text);
    return ok ? 0 : -1;
}

static void copy_trunc(char *dst, size_t cap, const char *s, size_t n) {
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, s, n);
    dst[n] = '\0';
}

/* ---------------------------------------------------------------- <Error> */

static void err_end(xw *w, const char *name, const char *text, size_t len) {
    s3xml_error *e = w->ud;
    if (w->depth != 2 || strcmp(w->names[0], "Error") != 0)
        return;
    if (strcmp(name, "Code") == 0)
        copy_trunc(e->code, sizeof e->code, text, len);
    else if (strcmp(name, "Message") == 0)
        copy_trunc(e->message, sizeof e->message, text, len);
    else if (strcmp(name, "RequestId") == 0)
        copy_trunc(e->request_id, sizeof e->request_id, text, len);
}

int s3xml_parse_error(const char *data, size_t len, s3xml_error *e) {
    xw w;
    memset(&w, 0, sizeof w);
    memset(e, 0, sizeof *e);
    if (len == 0)
        return -1;
    w.ud = e;
    w.on_end = err_end;
    if (xw_parse(&w, data, len, "Error") != 0)
        return -1; /* what was read before the fault stays (a RequestId is still worth reporting) */
    return e->code[0] != '\0' ? 0 : -1;
}

/* ---------------------------------------------------------------- DeleteObjects */

int s3xml_key_safe(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            if (c < 0x20)
                return 0;
            i++;
            continue;
        }
        uint32_t cp;
        size_t len;
        if ((c & 0xE0) == 0xC0)
            cp = c & 0x1F, len = 2;
        else if ((c & 0xF0) == 0xE0)
            cp = c & 0x0F, len = 3;
        else if ((c & 0xF8) == 0xF0)
            cp = c & 0x07, len = 4;
        else
            return 0;
        if (i + len > n)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000))
            return 0;
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF) || cp == 0xFFFE || cp == 0xFFFF)
            return 0;
        i += len;
    }
    return 1;
}

static void xml_escape(buf *b, const char *s, size_t n) {
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        const char *rep = NULL;
        switch (s[i]) {
        case '&': rep = "&amp;"; break;
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '"': rep = "&quot;"; break;
        case '\'': rep = "&apos;"; break;
        default: break;
        }
        if (rep == NULL)
            continue;
        buf_add(b, s + start, i - start);
        buf_addstr(b, rep);
        start = i + 1;
    }
    buf_add(b, s + start, n - start);
}

void s3xml_delete_request(buf *b, s3xml_key *const *keys, size_t n, int quiet) {
    buf_addstr(b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Delete xmlns=\"" S3XML_NS "\">");
    buf_addstr(b, quiet ? "<Quiet>true</Quiet>" : "<Quiet>false</Quiet>");
    for (size_t i = 0; i < n; i++) {
        buf_addstr(b, "<Object><Key>");
        xml_escape(b, keys[i]->s, keys[i]->len);
        buf_addstr(b, "</Key></Object>");
    }
    buf_addstr(b, "</Delete>");
}

int s3xml_key_cmp(const void *a, const void *b) {
    const s3xml_key *x = *(const s3xml_key *const *)a, *y = *(const s3xml_key *const *)b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, n);
    if (c != 0)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

/* The entry (<Deleted> or <Error>) being read, and the keys it applies to. */
typedef struct dm_parse {
    s3xml_key **order;
    size_t norder;
    char key_seen, code_seen;
    buf key;
    char code[64], message[256];
    int bad;
} dm_parse;

/* Mark every request key equal to the entry's key (duplicates included). */
static void dm_apply(dm_parse *d, int deleted) {
    s3xml_key probe = {d->key.p ? d->key.p : "", d->key.len, 0, S3XML_KEY_PENDING, "", ""};
    s3xml_key *pp = &probe;
    s3xml_key **hit = bsearch(&pp, d->order, d->norder, sizeof *d->order, s3xml_key_cmp);
    if (hit == NULL) {
        /* A key this request did not carry: the reply answers something else and cannot be
         * trusted, the less so in Quiet mode, where a key not listed counts as deleted. */
        d->bad = 1;
        return;
    }
    while (hit > d->order && s3xml_key_cmp(hit - 1, &pp) == 0)
        hit--;
    for (; hit < d->order + d->norder && s3xml_key_cmp(hit, &pp) == 0; hit++) {
        s3xml_key *k = *hit;
        if (deleted) {
            if (k->state == S3XML_KEY_PENDING)
                k->state = S3XML_KEY_DELETED;
        } else {
            k->state = S3XML_KEY_ERROR; /* an error wins over a Deleted for the same key */
            snprintf(k->code, sizeof k->code, "%s", d->code[0] ? d->code : "UnknownError");
            snprintf(k->message, sizeof k->message, "%s", d->message);
        }
    }
}

static void dm_start(xw *w, const char *name) {
    dm_parse *d = w->ud;
    if (w->depth == 2 && (strcmp(name, "Deleted") == 0 || strcmp(name, "Error") == 0)) {
        buf_clear(&d->key);
        d->key_seen = d->code_seen = 0;
        d->code[0] = d->message[0] = '\0';
    }
}

static void dm_end(xw *w, const char *name, const char *text, size_t len) {
    dm_parse *d = w->ud;
    if (w->depth == 3 && (strcmp(w->names[1], "Deleted") == 0 || strcmp(w->names[1], "Error") == 0)) {
        if (strcmp(name, "Key") == 0) {
            buf_clear(&d->key);
            buf_add(&d->key, text, len);
            if (buf_failed(&d->key))
                xw_fail(w);
            d->key_seen = 1;
        } else if (strcmp(name, "Code") == 0) {
            copy_trunc(d->code, sizeof d->code, text, len);
            d->code_seen = 1;
        } else if (strcmp(name, "Message") == 0) {
            copy_trunc(d->message, sizeof d->message, text, len);
        }
    } else if (w->depth == 2 && strcmp(w->names[0], "DeleteResult") == 0) {
        int del = strcmp(name, "Deleted") == 0;
        if (!del && strcmp(name, "Error") != 0)
            return;
        if (!d->key_seen) {
            d->bad = 1; /* an entry without a key: the reply cannot be trusted */
            return;
        }
        dm_apply(d, del);
    }
}

int s3xml_delete_result(const char *body, size_t len, s3xml_key **order, size_t n, int quiet) {
    dm_parse d;
    xw w;
    memset(&d, 0, sizeof d);
    memset(&w, 0, sizeof w);
    d.order = order;
    d.norder = n;
    w.ud = &d;
    w.on_start = dm_start;
    w.on_end = dm_end;
    int ok = xw_parse(&w, body, len, "DeleteResult") == 0 && !d.bad;
    buf_free(&d.key);
    if (!ok)
        return -1;
    for (size_t k = 0; k < n; k++) {
        if (order[k]->state == S3XML_KEY_PENDING)
            order[k]->state = quiet ? S3XML_KEY_DELETED /* Quiet: only errors are listed */
                                    : S3XML_KEY_NOT_IN_REPLY;
    }
    return 0;
}

/* ---------------------------------------------------------------- ListObjectsV2 */

static void entry_free(s3xml_entry *e) {
    free(e->key);
    free(e->last_modified);
    free(e->etag);
    memset(e, 0, sizeof *e);
}

void s3xml_list_free(s3xml_list *l) {
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n; i++)
        entry_free(&l->e[i]);
    for (size_t i = 0; i < l->np; i++)
        free(l->prefixes[i]);
    entry_free(&l->cur);
    free(l->cur_prefix);
    free(l->e);
    free(l->prefixes);
    free(l->prefixlens);
    free(l->next_token);
    free(l);
}

static int push_entry(s3xml_list *l) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        s3xml_entry *e = realloc(l->e, cap * sizeof *e);
        if (e == NULL)
            return -1;
        l->e = e;
        l->cap = cap;
    }
    l->e[l->n++] = l->cur;
    memset(&l->cur, 0, sizeof l->cur);
    return 0;
}

static int push_prefix(s3xml_list *l) {
    if (l->np == l->pcap) {
        size_t cap = l->pcap ? l->pcap * 2 : 16;
        char **p = realloc(l->prefixes, cap * sizeof *p);
        if (p == NULL)
            return -1;
        l->prefixes = p;
        size_t *pl = realloc(l->prefixlens, cap * sizeof *pl);
        if (pl == NULL)
            return -1;
        l->prefixlens = pl;
        l->pcap = cap;
    }
    l->prefixes[l->np] = l->cur_prefix;
    l->prefixlens[l->np++] = l->cur_prefixlen;
    l->cur_prefix = NULL;
    return 0;
}

/* *slot = a copy of text; the walk fails without memory. */
static void set_text(xw *w, char **slot, const char *text, size_t len) {
    free(*slot);
    if ((*slot = buf_dupn(text, len)) == NULL)
        xw_fail(w);
}

/* The children of ListBucketResult. */
static void list_end_top(xw *w, s3xml_list *l, const char *name, const char *text, size_t len) {
    if (strcmp(name, "IsTruncated") == 0) {
        l->truncated = len == 4 && strncmp(text, "true", 4) == 0;
    } else if (strcmp(name, "NextContinuationToken") == 0) {
        set_text(w, &l->next_token, text, len);
    } else if (strcmp(name, "EncodingType") == 0) {
        l->url_encoded = len == 3 && strncmp(text, "url", 3) == 0;
    } else if (strcmp(name, "Contents") == 0) {
        if (l->cur.key == NULL || push_entry(l) != 0)
            xw_fail(w);
    } else if (strcmp(name, "CommonPrefixes") == 0) {
        if (l->cur_prefix != NULL && push_prefix(l) != 0)
            xw_fail(w);
    }
}

/* The children of Contents. */
static void list_end_contents(xw *w, s3xml_list *l, const char *name, const char *text, size_t len) {
    if (strcmp(name, "Key") == 0) {
        set_text(w, &l->cur.key, text, len);
        l->cur.keylen = len;
    } else if (strcmp(name, "LastModified") == 0) {
        set_text(w, &l->cur.last_modified, text, len);
        l->cur.has_mtime = sigv4_parse_iso8601(text, len, &l->cur.mtime) == 0;
    } else if (strcmp(name, "ETag") == 0) {
        set_text(w, &l->cur.etag, text, len);
    } else if (strcmp(name, "Size") == 0) {
        char *e;
        char tmp[32];
        if (len == 0 || len >= sizeof tmp) {
            xw_fail(w);
            return;
        }
        memcpy(tmp, text, len);
        tmp[len] = '\0';
        l->cur.size = strtoll(tmp, &e, 10);
        if (*e != '\0' || l->cur.size < 0)
            xw_fail(w);
        l->cur.has_size = 1;
    }
}

static void list_end(xw *w, const char *name, const char *text, size_t len) {
    s3xml_list *l = w->ud;
    if (strcmp(w->names[0], "ListBucketResult") != 0)
        return;
    if (w->depth == 2) {
        list_end_top(w, l, name, text, len);
    } else if (w->depth == 3 && strcmp(w->names[1], "Contents") == 0) {
        list_end_contents(w, l, name, text, len);
    } else if (w->depth == 3 && strcmp(w->names[1], "CommonPrefixes") == 0 &&
               strcmp(name, "Prefix") == 0) {
        set_text(w, &l->cur_prefix, text, len);
        l->cur_prefixlen = len;
    }
}

static int hexval(int c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decode encoding-type=url in place ('+' is a space, as S3 writes it). -1 malformed. */
static int url_decode(char *s, size_t *len) {
    size_t o = 0, n = *len;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            int h, l;
            if (i + 2 >= n)
                return -1;
            h = hexval((unsigned char)s[i + 1]);
            l = hexval((unsigned char)s[i + 2]);
            if (h < 0 || l < 0)
                return -1;
            s[o++] = (char)(h * 16 + l);
            i += 2;
        } else if (s[i] == '+') {
            s[o++] = ' ';
        } else {
            s[o++] = s[i];
        }
    }
    s[o] = '\0';
    *len = o;
    return 0;
}

int s3xml_list_parse(s3xml_list *l, const char *body, size_t len) {
    xw w;
    memset(&w, 0, sizeof w);
    w.ud = l;
    w.on_end = list_end;
    int ok =
        xw_parse(&w, body, len, "ListBucketResult") == 0 && (!l->truncated || l->next_token != NULL);
    for (size_t i = 0; ok && l->url_encoded && i < l->n; i++)
        ok = url_decode(l->e[i].key, &l->e[i].keylen) == 0;
    for (size_t i = 0; ok && l->url_encoded && i < l->np; i++)
        ok = url_decode(l->prefixes[i], &l->prefixlens[i]) == 0;
    return ok ? 0 : -1;
}
