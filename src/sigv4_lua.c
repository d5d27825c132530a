/* resclean.sigv4: the Lua binding of sigv4.c (`require "resclean.sigv4"`).
 * Misuse raises "bad argument #1 to 'sign' (field 'x': ...)"; nothing fails otherwise but
 * memory. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>

#include "luax.h"
#include "sigv4.h"

#define RESULT_MT "resclean.sigv4.result"

/* A box owning a sigv4_result, so a Lua error while building the reply table frees it (__gc). */
static int result_gc(lua_State *L) {
    sigv4_result *r = luaL_checkudata(L, 1, RESULT_MT);
    sigv4_result_free(r);
    return 0;
}

/* A zeroed result in a box on the stack (its __gc frees what it holds). */
static sigv4_result *sigv4_lua_newresult(lua_State *L) {
    sigv4_result *r = lua_newuserdatauv(L, sizeof *r, 0);
    memset(r, 0, sizeof *r);
    if (luaL_newmetatable(L, RESULT_MT)) {
        lua_pushcfunction(L, result_gc);
        lua_setfield(L, -2, "__gc");
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

static time_t check_time(lua_State *L, const char *field) {
    time_t now = 0;
    int t = lua_getfield(L, 1, field);
    if (t == LUA_TNIL) {
        now = time(NULL);
    } else if (t == LUA_TNUMBER) {
        int isint;
        lua_Integer i = lua_tointegerx(L, -1, &isint);
        char d[17];
        if (!isint || i < 0 || (lua_Integer)(time_t)i != i || sigv4_format_date((time_t)i, d) < 0)
            field_error(L, field, "integer epoch seconds (years 1970-9999) expected");
        now = (time_t)i;
    } else if (t == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        if (sigv4_parse_time(s, len, &now) < 0)
            field_error(L, field, "\"YYYYMMDDTHHMMSSZ\" or \"YYYY-MM-DDTHH:MM:SSZ\" expected");
    } else {
        field_error(L, field, "epoch seconds or a UTC time string expected");
    }
    lua_pop(L, 1);
    return now;
}

/* Converts the value at the top to a string, moves it into the anchor table (so the pointer stays
 * valid) and returns it. */
static const char *anchor_string(lua_State *L, int anchor, int *nanchor, const char *field,
                                 int allow_nil) {
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

/* The scalar fields of sign's table (strings anchored by the table itself). */
static void check_fields(lua_State *L, sigv4_request *req) {
    size_t len;
    req->method = req_string(L, "method");
    for (const char *m = req->method; *m; m++)
        if (*m < 'A' || *m > 'Z')
            field_error(L, "method", "upper-case HTTP method expected");
    req->path = opt_string(L, "path", &len);
    if (req->path == NULL)
        req->path = "/";
    else if (req->path[0] != '/' || strlen(req->path) != len)
        field_error(L, "path", "absolute path (starting with '/') expected");
    req->access_key = req_string(L, "access_key");
    req->secret_key = req_string(L, "secret_key");
    req->session_token = opt_string(L, "session_token", &len);
    if (req->session_token && strlen(req->session_token) != len)
        field_error(L, "session_token", "embedded zero byte");
    req->region = req_string(L, "region");
    req->service = req_string(L, "service");
    req->now = check_time(L, "time");
    req->s3 = opt_bool(L, "s3", 0);
    req->no_normalize = !opt_bool(L, "normalize", !req->s3);
    if (req->s3 && !req->no_normalize)
        field_error(L, "normalize", "S3 paths are never normalised");
    req->path_encoded = opt_bool(L, "path_encoded", 0);
    req->sign_body = opt_bool(L, "sign_body", 0);
    req->omit_session_token = opt_bool(L, "omit_session_token", 0);
}

/* payload_hash as given, or the hash of body (written to body_hash); NULL: neither. */
static const char *check_payload(lua_State *L, char body_hash[65]) {
    size_t len, blen;
    const char *payload = opt_string(L, "payload_hash", &len);
    const char *body = opt_string(L, "body", &blen);
    if (payload && body)
        field_error(L, "body", "give either body or payload_hash, not both");
    if (payload && (len == 0 || strlen(payload) != len || strpbrk(payload, "\r\n") != NULL))
        field_error(L, "payload_hash", "hex sha256 or a token such as \"UNSIGNED-PAYLOAD\" expected");
    if (body) {
        sigv4_sha256_hex(body, blen, body_hash);
        payload = body_hash;
    }
    return payload;
}

/* expires: 0 (header signing) or seconds of a presigned URL. */
static long check_expires(lua_State *L) {
    long expires = 0;
    int t = lua_getfield(L, 1, "expires");
    if (t != LUA_TNIL) {
        int isint;
        lua_Integer e = lua_tointegerx(L, -1, &isint);
        if (t != LUA_TNUMBER || !isint || e < 1 || e > SIGV4_MAX_EXPIRES)
            field_error(L, "expires", "integer seconds in 1..604800 expected");
        expires = (long)e;
    }
    lua_pop(L, 1);
    return expires;
}

static void push_result(lua_State *L, const sigv4_result *res) {
    lua_createtable(L, 0, 12);
    luax_setstr(L, "canonical_request", res->canonical_request);
    luax_setstr(L, "string_to_sign", res->string_to_sign);
    luax_setstr(L, "signature", res->signature);
    luax_setstr(L, "authorization", res->authorization);
    luax_setstr(L, "query", res->query);
    luax_setstr(L, "amz_date", res->amz_date);
    luax_setstr(L, "path", res->encoded_path);
    luax_setstr(L, "signed_headers", res->signed_headers);
    luax_setstr(L, "credential_scope", res->credential_scope);
    lua_createtable(L, (int)res->nadd_headers, 0); /* out add */
    for (size_t i = 0; i < res->nadd_headers; i++) {
        lua_createtable(L, 2, 0);
        lua_pushstring(L, res->add_headers[i].name);
        lua_rawseti(L, -2, 1);
        lua_pushstring(L, res->add_headers[i].value);
        lua_rawseti(L, -2, 2);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "add_headers");
}

/* sigv4.sign{method, path, query, headers, payload_hash | body, access_key, secret_key,
 *            session_token, region, service, time, s3, normalize, path_encoded, sign_body,
 *            omit_session_token, expires} -> {canonical_request, string_to_sign, signature,
 *            authorization, query, amz_date, path, signed_headers, credential_scope, add_headers} */
static int l_sign(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    sigv4_request req = {0};
    char body_hash[65];
    lua_newtable(L); /* anchor for converted strings */
    int anchor = lua_gettop(L), nanchor = 0;
    check_fields(L, &req);
    req.payload_hash = check_payload(L, body_hash);
    req.expires = check_expires(L);
    req.query = check_kvs(L, "query", anchor, &nanchor, &req.nquery, 0);
    req.headers = check_kvs(L, "headers", anchor, &nanchor, &req.nheaders, 1);
    if (!sigv4_has_header(&req, "host"))
        field_error(L, "headers", "a host header is required");
    sigv4_result *res = sigv4_lua_newresult(L); /* ... box */
    if (sigv4_sign(&req, res) < 0)
        return luaL_error(L, "sigv4.sign: not enough memory");
    push_result(L, res);    /* box out */
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
    sigv4_result *box = sigv4_lua_newresult(L); /* owns the string to sign until pushed */
    char sig[65];
    if (sigv4_sign_chunk(secret, region, service, now, prev, chunk_hash, &box->string_to_sign, sig) < 0)
        return luaL_error(L, "sigv4.sign_chunk: not enough memory");
    lua_createtable(L, 0, 2);
    luax_setstr(L, "string_to_sign", box->string_to_sign);
    luax_setstr(L, "signature", sig);
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
        if (sigv4_unreserved(c) || (keep_slash && c == '/')) {
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
    {"hmac_sha256", l_hmac_sha256}, {"sha256_hex", l_sha256_hex}, {"sign", l_sign},
    {"sign_chunk", l_sign_chunk},   {"uri_encode", l_uri_encode}, {NULL, NULL},
};

int luaopen_resclean_sigv4(lua_State *L) {
    luaL_newlib(L, sigv4_funcs);
    return 1;
}
