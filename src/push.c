/*
 * resclean.push_http: one HTTP request with a body, for pushing a run's metrics to a Prometheus
 * Pushgateway (`--metrics-push URL`). libcurl's easy interface: one request, no retries
 * (a --once run ends soon after; the next run pushes again), bounded by a timeout.
 * The URL's user info (basic authentication) is used by curl but never echoed: errors
 * name the request by its method only, and the caller redacts.
 */
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include <lauxlib.h>
#include <lua.h>

#include "resclean.h"

typedef struct reply {
    char text[512];
    size_t len;
} reply;

/* Keep the first bytes of the answer (a Pushgateway's error is one short line). */
static size_t on_body(char *p, size_t size, size_t n, void *ud) {
    reply *r = ud;
    size_t len = size * n, room = sizeof r->text - 1 - r->len;
    size_t take = len < room ? len : room;
    memcpy(r->text + r->len, p, take);
    r->len += take;
    r->text[r->len] = '\0';
    return len;
}

/* request(method, url, body, content_type, timeout_s [, ca_file]) -> status, answer
 * or nil, message (no answer: connection refused, timeout, TLS). */
static int push_request(lua_State *L) {
    const char *method = luaL_checkstring(L, 1);
    const char *url = luaL_checkstring(L, 2);
    size_t blen;
    const char *body = luaL_checklstring(L, 3, &blen);
    const char *ctype = luaL_checkstring(L, 4);
    double timeout = luaL_checknumber(L, 5);
    const char *ca = luaL_optstring(L, 6, NULL);
    luaL_argcheck(L, timeout > 0 && timeout < 86400, 5, "expected seconds > 0");
    CURL *e = curl_easy_init();
    if (e == NULL)
        return luaL_error(L, "push: curl_easy_init failed");
    char hdr[256], err[CURL_ERROR_SIZE] = "";
    snprintf(hdr, sizeof hdr, "Content-Type: %s", ctype);
    struct curl_slist *hdrs = curl_slist_append(NULL, hdr);
    reply r = {.len = 0};
    r.text[0] = '\0';
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(timeout * 1000));
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, err);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &r);
    if (ca != NULL)
        curl_easy_setopt(e, CURLOPT_CAINFO, ca);
    CURLcode cc = curl_easy_perform(e);
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(e);
    curl_slist_free_all(hdrs);
    if (cc != CURLE_OK) {
        luaL_pushfail(L);
        lua_pushstring(L, err[0] ? err : curl_easy_strerror(cc));
        return 2;
    }
    lua_pushinteger(L, status);
    lua_pushlstring(L, r.text, r.len);
    return 2;
}

int luaopen_resclean_push_http(lua_State *L) {
    lua_newtable(L);
    lua_pushcfunction(L, push_request);
    lua_setfield(L, -2, "request");
    return 1;
}
