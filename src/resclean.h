/* resclean: what the host's files share. */
#ifndef RESCLEAN_H
#define RESCLEAN_H

#include <lua.h>

#define RESCLEAN_VERSION "0.1.0"

#ifndef RESCLEAN_SHAREDIR
#define RESCLEAN_SHAREDIR "/usr/local/share/resclean"
#endif

int luaopen_cjson(lua_State *L);
int luaopen_cjson_safe(lua_State *L);
int luaopen_resclean_pg(lua_State *L);
int luaopen_resclean_s3(lua_State *L);
int luaopen_resclean_sigv4(lua_State *L);
int luaopen_resclean_sys(lua_State *L);

#endif
