/*
 * libFuzzer harness: the DeleteObjects reply parser of src/s3xml.c, checked against an
 * independent strict reading of the same XML.
 *
 * The property that matters for the sweep: a key is reported deleted only when the reply
 * really says so. The sweep deletes a row after its key is reported deleted, so a parser
 * that says "deleted" for a key the server did not delete leaves an object without its row.
 *
 * Input: "key|key|...\n" then the reply body. The harness asks for those keys (plus a few
 * fixed ones), runs s3xml.c's parsing code on the reply, and aborts when it reports a
 * key deleted that the reference below does not find in a well-formed <Deleted> entry of a
 * <DeleteResult> (or finds in an <Error> entry).
 *
 * It links src/s3xml.c and src/buf.c: no Lua, no network.
 */
#define _POSIX_C_SOURCE 200809L /* strdup */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <expat.h>

#include "../../src/buf.h"
#include "../../src/s3xml.h"

/* ------------------------------------------------------------ s3xml.c's view */

#define MAXKEYS 64

typedef struct keyset {
    s3xml_key keys[MAXKEYS];
    size_t n;
    char store[4096];
} keyset;

static const char *const fixed_keys[] = {
    "a", "b", "a b", "x&y", "\xc3\xbc", "0f8fad5b-d9cb-469f-a165-70867728950e", "k/../k", "A",
};

static void add_key(keyset *ks, size_t *used, const char *s, size_t n) {
    if (n == 0 || ks->n >= MAXKEYS || *used + n + 1 > sizeof ks->store) return;
    if (!s3xml_key_safe((const unsigned char *)s, n)) return; /* delete_many sends those alone */
    memcpy(ks->store + *used, s, n);
    ks->store[*used + n] = '\0';
    ks->keys[ks->n].s = ks->store + *used;
    ks->keys[ks->n].len = n;
    ks->n++;
    *used += n + 1;
}

/* s3xml.c's outcome per key, as s3.c's delete_many applies a 200 reply. */
static void run_s3c(keyset *ks, const char *body, size_t len, int quiet) {
    s3xml_key *order[MAXKEYS];
    for (size_t i = 0; i < ks->n; i++) {
        ks->keys[i].state = S3XML_KEY_PENDING;
        order[i] = &ks->keys[i];
    }
    qsort(order, ks->n, sizeof *order, s3xml_key_cmp);
    if (s3xml_delete_result(body, len, order, ks->n, quiet) != 0)
        for (size_t i = 0; i < ks->n; i++) order[i]->state = S3XML_KEY_FAILED; /* untrusted */
}

/* ------------------------------------------------------------ the reference */

/* A small tree built with expat; every element keeps its own text and whether it has
 * element children. */
typedef struct node {
    char *name; /* local name */
    buf text;
    int nchild;
    struct node *parent, *first, *last, *next;
} node;

typedef struct ref {
    node *root, *cur;
    int bad;
    XML_Parser p;
} ref;

static const char *lname(const char *n) {
    const char *c = strrchr(n, ':');
    return c ? c + 1 : n;
}

static void XMLCALL ref_start(void *ud, const XML_Char *name, const XML_Char **attrs) {
    ref *t = ud;
    (void)attrs;
    node *n = calloc(1, sizeof *n);
    if (n == NULL || (n->name = strdup(lname(name))) == NULL) abort();
    n->parent = t->cur;
    if (t->cur == NULL) {
        t->root = n;
    } else {
        t->cur->nchild++;
        if (t->cur->last) t->cur->last->next = n;
        else t->cur->first = n;
        t->cur->last = n;
    }
    t->cur = n;
}

static void XMLCALL ref_end(void *ud, const XML_Char *name) {
    ref *t = ud;
    (void)name;
    t->cur = t->cur->parent;
}

static void XMLCALL ref_chars(void *ud, const XML_Char *s, int len) {
    ref *t = ud;
    if (t->cur == NULL) return;
    buf_add(&t->cur->text, s, (size_t)len);
    if (buf_failed(&t->cur->text)) abort();
}

static void XMLCALL ref_doctype(void *ud, const XML_Char *name, const XML_Char *sysid,
                                const XML_Char *pubid, int internal) {
    ref *t = ud;
    (void)name, (void)sysid, (void)pubid, (void)internal;
    t->bad = 1;
    XML_StopParser(t->p, XML_FALSE);
}

static void free_tree(node *n) {
    while (n != NULL) {
        node *next = n->next;
        free_tree(n->first);
        buf_free(&n->text);
        free(n->name);
        free(n);
        n = next;
    }
}

/* Does entry (a <Deleted> or <Error>) name key? Only a <Key> with text and no child
 * elements names a key. */
static int entry_names(const node *e, const char *key, size_t len) {
    for (const node *c = e->first; c != NULL; c = c->next)
        if (strcmp(c->name, "Key") == 0 && c->nchild == 0 && c->text.len == len &&
            (len == 0 || memcmp(c->text.p, key, len) == 0))
            return 1;
    return 0;
}

/* 1 when the reply, read strictly, says key was deleted. */
static int ref_deleted(const node *root, const char *key, size_t len, int quiet) {
    int in_deleted = 0;
    for (const node *e = root->first; e != NULL; e = e->next) {
        if (strcmp(e->name, "Error") == 0 && entry_names(e, key, len)) return 0;
        if (strcmp(e->name, "Deleted") == 0 && entry_names(e, key, len)) in_deleted = 1;
    }
    return in_deleted || quiet;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *nl = memchr(data, '\n', size);
    if (nl == NULL) return 0;
    keyset ks;
    size_t used = 0;
    memset(&ks, 0, sizeof ks);
    for (size_t i = 0; i < sizeof fixed_keys / sizeof fixed_keys[0]; i++)
        add_key(&ks, &used, fixed_keys[i], strlen(fixed_keys[i]));
    const char *p = (const char *)data, *end = nl;
    while (p <= end) {
        const char *bar = memchr(p, '|', (size_t)(end - p));
        if (bar == NULL) bar = end;
        add_key(&ks, &used, p, (size_t)(bar - p));
        p = bar + 1;
    }
    const char *body = nl + 1;
    size_t blen = size - (size_t)(body - (const char *)data);

    ref t;
    memset(&t, 0, sizeof t);
    t.p = XML_ParserCreate("UTF-8");
    if (t.p == NULL) abort();
    XML_SetUserData(t.p, &t);
    XML_SetElementHandler(t.p, ref_start, ref_end);
    XML_SetCharacterDataHandler(t.p, ref_chars);
    XML_SetStartDoctypeDeclHandler(t.p, ref_doctype);
    int ok = XML_Parse(t.p, body, (int)blen, 1) == XML_STATUS_OK && !t.bad && t.root != NULL &&
             strcmp(t.root->name, "DeleteResult") == 0;
    XML_ParserFree(t.p);

    for (int quiet = 0; quiet <= 1; quiet++) {
        run_s3c(&ks, body, blen, quiet);
        for (size_t i = 0; i < ks.n; i++) {
            if (ks.keys[i].state != S3XML_KEY_DELETED) continue;
            if (!ok || !ref_deleted(t.root, ks.keys[i].s, ks.keys[i].len, quiet)) {
                fprintf(stderr, "s3xml.c reports key \"%s\" deleted (quiet=%d), the reply does not say so\n",
                        ks.keys[i].s, quiet);
                abort();
            }
        }
    }
    free_tree(t.root);
    return 0;
}
