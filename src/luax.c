/* luax.h: the field setter and the error table of the Lua bindings. */
#include "luax.h"

#include <lauxlib.h>

void luax_setstr(lua_State *L, const char *field, const char *s) {
    if (s == NULL)
        return;
    lua_pushstring(L, s);
    lua_setfield(L, -2, field);
}

void luax_setlstr(lua_State *L, const char *field, const char *s, size_t len) {
    if (s == NULL)
        return;
    lua_pushlstring(L, s, len);
    lua_setfield(L, -2, field);
}

/* "pg 55P03: could not obtain lock on row ... (detail)", so error(err) prints something useful */
static int error_tostring(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "kind");
    lua_getfield(L, 1, "code");
    lua_getfield(L, 1, "message");
    lua_getfield(L, 1, "detail");
    const char *kind = luaL_optstring(L, 2, "error"), *code = luaL_optstring(L, 3, "?");
    const char *msg = luaL_optstring(L, 4, "?");
    if (lua_isstring(L, 5))
        lua_pushfstring(L, "%s %s: %s (%s)", kind, code, msg, lua_tostring(L, 5));
    else
        lua_pushfstring(L, "%s %s: %s", kind, code, msg);
    return 1;
}

void luax_newerror(lua_State *L, const char *kind, const char *code) {
    lua_createtable(L, 0, 8);
    if (luaL_newmetatable(L, LUAX_ERROR_MT)) { /* whichever module comes first registers it */
        lua_pushcfunction(L, error_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_setmetatable(L, -2);
    luax_setstr(L, "kind", kind);
    luax_setstr(L, "code", code);
}
