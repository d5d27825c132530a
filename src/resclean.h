/* resclean: what the host's files share. */
#ifndef RESCLEAN_H
#define RESCLEAN_H

#include <lua.h>

/* RESCLEAN_VERSION ("0.2.0", or "0.2.0+g<commit>" from a git tree) is given by the Makefile, from
 * the VERSION file, to the units that print it (main.c, sys.c): see VERSION_DEF there. */

#ifndef RESCLEAN_SHAREDIR
#define RESCLEAN_SHAREDIR "/usr/local/share/resclean"
#endif

#ifndef RESCLEAN_LIBDIR
#define RESCLEAN_LIBDIR "/usr/local/lib/resclean"
#endif
#define RESCLEAN_NET_SO "resclean_net.so"

int luaopen_cjson(lua_State *L);
int luaopen_cjson_safe(lua_State *L);
int luaopen_resclean_sys(lua_State *L);
int luaopen_resclean_httpd(lua_State *L);
void resclean_guard_stdio(void);
/* in resclean_net.so (net.c, pg.c, s3.c, sigv4_lua.c and the units they use), loaded on the first
 * require */
int luaopen_resclean_pg(lua_State *L);
int luaopen_resclean_s3(lua_State *L);
int luaopen_resclean_sigv4(lua_State *L);
int luaopen_resclean_push_http(lua_State *L);
int resclean_net_init(void);
void resclean_net_cleanup(void);

#endif
