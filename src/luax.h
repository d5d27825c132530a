/* What the Lua bindings of resclean_net.so (pg.c, s3.c, sigv4_lua.c) share: one field
 * setter and one error shape. */
#ifndef RESCLEAN_LUAX_H
#define RESCLEAN_LUAX_H
#include <stddef.h>

#include <lua.h>

#define LUAX_ERROR_MT "resclean.error"

/* t[field] = s for the table on the stack top; nothing when s is NULL. */
void luax_setstr(lua_State *L, const char *field, const char *s);
void luax_setlstr(lua_State *L, const char *field, const char *s, size_t len);

/* Pushes a new error table {kind=, code=} with the shared metatable (its __tostring gives
 * "kind code: message (detail)"); the caller adds message and the rest. pg and s3 errors are
 * the same kind of table: they differ only in kind and their fields. The table reports facts
 * (the SQLSTATE, the HTTP status, the transport's failure); whether one is worth retrying is
 * resclean.errors' to say, not the binding's. */
void luax_newerror(lua_State *L, const char *kind, const char *code);

#endif
