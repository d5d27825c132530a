/*
 * resclean: the host. Builds a Lua state with the resclean primitives in
 * package.preload and runs a script in protected mode (the lua.c shape:
 * main only builds the state; pmain does the work under lua_pcall).
 */
#define _DEFAULT_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "resclean.h"

#define EXIT_USAGE 2

static const char *progname = "resclean";

static const char usage_text[] =
    "usage: resclean COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  run SCRIPT [ARG...]  run a Lua script with the resclean primitives: a file, or\n"
    "                       a shipped script by name (check, sweep, cancel,\n"
    "                       status, reconcile); exit code: the integer the script\n"
    "                       returns\n"
    "  version              print the versions of resclean and its libraries\n"
    "  help                 print this help\n"
    "\n"
    "shipped scripts (each explains itself with --help):\n"
    "  resclean run check [--json] [--metrics-file FILE] [--policy FILE]\n"
    "                     [--log-level LEVEL]\n"
    "  resclean run sweep [--once] [--dry-run] [--policy FILE] [--metrics-file FILE]\n"
    "                     [--metrics-listen ADDR:PORT] [--healthz-grace SECONDS]\n"
    "                     [--metrics-push URL] [--log-level LEVEL]\n"
    "  resclean run cancel [--dry-run | --notify] [--policy FILE] [--log-level LEVEL] ID...\n"
    "  resclean run status [--json] [--policy FILE] [--log-level LEVEL]\n"
    "  resclean run reconcile [--apply] [--json] [--older-than DURATION]\n"
    "                         [--page-size N] [--max-delete N] [--policy FILE]\n"
    "                         [--log-level LEVEL]\n"
    "\n"
    "exit codes: 0 done; 1 some resources failed or were refused; 2 usage or\n"
    "  configuration to fix, nothing touched; 3 database or storage unreachable\n"
    "\n"
    "environment:\n"
    "  DATABASE_URL           libpq URI or conninfo; unset: libpq's PG* variables\n"
    "                         (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE,\n"
    "                         PGSSLMODE, PGSSLROOTCERT, ...)\n"
    "  RESCLEAN_DIRECT_DATABASE_URL  PostgreSQL itself, for LISTEN and the singleton\n"
    "                         lock when DATABASE_URL is a transaction pool (PgBouncer)\n"
    "  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN  S3 credentials\n"
    "  AWS_REGION             else AWS_DEFAULT_REGION, else us-east-1\n"
    "  AWS_ENDPOINT_URL_S3    else AWS_ENDPOINT_URL, else AWS; e.g. http://minio:9000\n"
    "  AWS_CA_BUNDLE          CA file for an https endpoint with a private CA\n"
    "  RESCLEAN_S3_VIRTUAL_HOSTED  set: bucket.host URLs instead of host/bucket\n"
    "  RESCLEAN_BUCKET        the bucket (default cipherswarm-resources)\n"
    "  RESCLEAN_POLICY        policy file, as --policy\n"
    "  RESCLEAN_LOG_LEVEL     debug, info (default), warn or error\n"
    "  RESCLEAN_LOG_STDERR    json: errors only as JSON lines (also when stdout and\n"
    "                         stderr are one file); plain: also as a stderr line\n"
    "  RESCLEAN_PUSH_CA_BUNDLE  CA file for an https --metrics-push URL\n"
    "  RESCLEAN_EVENT_CHECK   a file where unlisted log events are noted (the specs)\n"
    "  NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID  set by systemd (Type=notify)\n"
    "  LUA_PATH, LUA_CPATH    extra Lua module paths, searched first (LUA_PATH_5_4,\n"
    "                         LUA_CPATH_5_4 win); ';;' stands for resclean's own\n"
    "\n"
    "manuals: resclean(1); the Lua API for your own scripts: resclean-lua(7)\n";

static const luaL_Reg preloads[] = {{"cjson", luaopen_cjson},
                                    {"cjson.safe", luaopen_cjson_safe},
                                    {"resclean.sys", luaopen_resclean_sys},
                                    {"resclean.httpd", luaopen_resclean_httpd},
                                    {NULL, NULL}};

static const char *const net_modules[][2] = {{"resclean.pg", "luaopen_resclean_pg"},
                                             {"resclean.s3", "luaopen_resclean_s3"},
                                             {"resclean.sigv4", "luaopen_resclean_sigv4"},
                                             {"resclean.push_http", "luaopen_resclean_push_http"}};

/* Message handler: turn the error into "message + traceback". Error tables
 * from the primitives ({kind, code, message}) are rendered readably. */
static int msghandler(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) {
            msg = lua_tostring(L, -1);
        } else if (lua_type(L, 1) == LUA_TTABLE) {
            lua_getfield(L, 1, "message");
            lua_getfield(L, 1, "kind");
            lua_getfield(L, 1, "code");
            msg = lua_pushfstring(L, "%s error%s%s: %s", luaL_optstring(L, -2, "unknown"),
                                  lua_isnil(L, -1) ? "" : " ", luaL_optstring(L, -1, ""),
                                  luaL_optstring(L, -3, "(no message)"));
        } else {
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
        }
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Directory part of path, "." when there is none. */
static void dirname_of(const char *path, char *out, size_t size) {
    const char *slash = strrchr(path, '/');
    if (slash == NULL) {
        snprintf(out, size, ".");
    } else if (slash == path) {
        snprintf(out, size, "/");
    } else {
        snprintf(out, size, "%.*s", (int)(slash - path), path);
    }
}

/* The folder of the running binary (from /proc/self/exe): 0, or -1 when unknown. */
static int exe_dir(char *dir, size_t size) {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return -1;
    exe[n] = '\0';
    dirname_of(exe, dir, size);
    return 0;
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Where resclean's own Lua library and scripts live: next to the binary in
 * the source tree (./resclean, build/asan/resclean), else the installed
 * share folder. Found from /proc/self/exe so no environment is needed.
 * A home has both lib/resclean and scripts: /usr/bin/../../lib/resclean alone is
 * /usr/lib/resclean (resclean_net.so's folder) where /lib is /usr/lib.
 * Pushes the lib folder and the scripts folder. */
static void push_home(lua_State *L) {
    char dir[PATH_MAX];
    static const char *const rel[] = {"", "/../..", "/../share/resclean"};
    if (exe_dir(dir, sizeof dir) == 0) {
        for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
            const char *probe = lua_pushfstring(L, "%s%s/lib/resclean", dir, rel[i]);
            int found = is_dir(probe);
            lua_pop(L, 1);
            probe = lua_pushfstring(L, "%s%s/scripts", dir, rel[i]);
            found = found && is_dir(probe);
            lua_pop(L, 1);
            if (found) {
                lua_pushfstring(L, "%s%s/lib", dir, rel[i]);
                lua_pushfstring(L, "%s%s/scripts", dir, rel[i]);
                return;
            }
        }
    }
    lua_pushstring(L, RESCLEAN_SHAREDIR "/lib");
    lua_pushstring(L, RESCLEAN_SHAREDIR "/scripts");
}

/* ---- resclean_net.so: loaded on the first require of pg, s3 or sigv4 ---- */

static void *net_lib;

/* The library next to the binary (source tree, build/asan), else the installed one. */
static void *net_open(char *err, size_t errsize) {
    char dir[PATH_MAX], path[PATH_MAX + 64];
    static const char *const rel[] = {"/", "/../lib/resclean/"};
    const char *tried = RESCLEAN_LIBDIR "/" RESCLEAN_NET_SO;
    int known = exe_dir(dir, sizeof dir) == 0;
    for (size_t i = 0; known && i < sizeof rel / sizeof rel[0]; i++) {
        snprintf(path, sizeof path, "%s%s%s", dir, rel[i], RESCLEAN_NET_SO);
        if (access(path, F_OK) == 0) {
            tried = path;
            break;
        }
    }
    void *h = dlopen(tried, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        const char *why = dlerror();
        snprintf(err, errsize, "%s (looked next to the binary, in ../lib/resclean and in %s)",
                 why != NULL ? why : tried, RESCLEAN_LIBDIR);
    }
    return h;
}

/* A function of resclean_net.so; loads and initialises it the first time. NULL with a
 * message in err when it cannot. */
static void *net_symbol(const char *name, char *err, size_t errsize) {
    if (net_lib == NULL) {
        void *h = net_open(err, errsize);
        if (h == NULL)
            return NULL;
        int (*init)(void);
        *(void **)&init = dlsym(h, "resclean_net_init");
        if (init == NULL || init() != 0) {
            snprintf(err, errsize, "%s: cannot initialise libcurl", RESCLEAN_NET_SO);
            dlclose(h);
            return NULL;
        }
        net_lib = h;
    }
    void *f = dlsym(net_lib, name);
    if (f == NULL)
        snprintf(err, errsize, "%s has no %s", RESCLEAN_NET_SO, name);
    return f;
}

static void net_cleanup(void) {
    if (net_lib != NULL) {
        void (*cleanup)(void);
        *(void **)&cleanup = dlsym(net_lib, "resclean_net_cleanup");
        if (cleanup != NULL)
            cleanup();
    }
}

/* package.preload loader: upvalue 1 names the luaopen_ function in resclean_net.so. */
static int net_loader(lua_State *L) {
    char err[PATH_MAX + 256];
    lua_CFunction open;
    *(void **)&open = net_symbol(lua_tostring(L, lua_upvalueindex(1)), err, sizeof err);
    if (open == NULL)
        return luaL_error(L, "cannot load %s: %s", lua_tostring(L, 1), err);
    return open(L);
}

/* package.path: LUA_PATH (";;" = the defaults), the script's folder,
 * resclean's lib/, then Lua's system paths. Same for cpath. */
static void set_path(lua_State *L, const char *field, const char *envname, const char *own) {
    const char *env = getenv(envname);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, field);                           /* package syspath */
    lua_pushfstring(L, "%s%s", own, lua_tostring(L, -1)); /* package syspath defaults */
    if (env != NULL) {
        const char *defaults = lua_tostring(L, -1);
        if (strstr(env, ";;") != NULL) {
            const char *sep = lua_pushfstring(L, ";%s;", defaults);
            luaL_gsub(L, env, ";;", sep);
            lua_remove(L, -2);
        } else {
            lua_pushfstring(L, "%s;%s", env, defaults);
        }
        lua_remove(L, -2);
    }
    lua_setfield(L, -3, field);
    lua_pop(L, 2);
}

/* A script argument that is not a path to a file but names a shipped
 * script ("sweep", "sweep.lua") resolves to the installed scripts/.
 * Only a regular file shadows a shipped name: a folder called "check"
 * in the working directory must not turn "run check" into a read error. */
static const char *resolve_script(lua_State *L, const char *script, const char *scripts) {
    struct stat st;
    if (strchr(script, '/') != NULL || (stat(script, &st) == 0 && S_ISREG(st.st_mode)))
        return script;
    const char *ext = strstr(script, ".lua") ? "" : ".lua";
    const char *cand = lua_pushfstring(L, "%s/%s%s", scripts, script, ext);
    if (stat(cand, &st) == 0)
        return cand;
    lua_pop(L, 1);
    return script;
}

static int run_script(lua_State *L, int argc, char **argv) {
    char sdir[PATH_MAX];
    if (argc < 3) {
        fprintf(stderr, "%s: run needs a script\n%s", progname, usage_text);
        return EXIT_USAGE;
    }
    push_home(L); /* lib scripts */
    const char *lib = lua_tostring(L, -2), *scripts = lua_tostring(L, -1);
    const char *script = resolve_script(L, argv[2], scripts);
    dirname_of(script, sdir, sizeof sdir);

    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s/?.lua;%s/?/init.lua;", sdir, sdir, lib, lib);
    set_path(L, "path", getenv("LUA_PATH_5_4") ? "LUA_PATH_5_4" : "LUA_PATH", lua_tostring(L, -1));
    lua_pop(L, 1);
    set_path(L, "cpath", getenv("LUA_CPATH_5_4") ? "LUA_CPATH_5_4" : "LUA_CPATH", "");

    /* arg as the standalone lua gives it: arg[0] the script, arg[-1] "run" */
    lua_createtable(L, argc - 3, 3);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - 2);
    }
    lua_setglobal(L, "arg");

    lua_pushstring(L, lib);
    lua_setfield(L, LUA_REGISTRYINDEX, "resclean.libdir");

    int status = luaL_loadfile(L, script);
    if (status != LUA_OK) {
        /* missing, unreadable or not Lua: nothing ran */
        fprintf(stderr, "%s: %s\n", progname, lua_tostring(L, -1));
        return EXIT_USAGE;
    }
    for (int i = 3; i < argc; i++)
        lua_pushstring(L, argv[i]);
    int base = lua_gettop(L) - (argc - 3);
    lua_pushcfunction(L, msghandler);
    lua_insert(L, base);
    status = lua_pcall(L, argc - 3, 1, base);
    lua_remove(L, base);
    if (status != LUA_OK) {
        fprintf(stderr, "%s: %s\n", progname, lua_tostring(L, -1));
        return EXIT_FAILURE;
    }
    if (lua_isinteger(L, -1))
        return (int)(lua_tointeger(L, -1) & 0xff);
    if (lua_isboolean(L, -1))
        return lua_toboolean(L, -1) ? EXIT_SUCCESS : EXIT_FAILURE;
    return EXIT_SUCCESS;
}

static int print_version(void) {
    char err[PATH_MAX + 256];
    void (*versions)(FILE *);
    printf("resclean %s\n", RESCLEAN_VERSION);
    printf("%s\n", LUA_RELEASE);
    *(void **)&versions = net_symbol("resclean_net_versions", err, sizeof err);
    if (versions == NULL) {
        fflush(stdout);
        fprintf(stderr, "%s: cannot load %s: %s\n", progname, RESCLEAN_NET_SO, err);
        return EXIT_FAILURE;
    }
    versions(stdout);
    return EXIT_SUCCESS;
}

/* All real work, in protected mode. Stack: argc argv -> exit code */
static int pmain(lua_State *L) {
    int argc = (int)lua_tointeger(L, 1);
    char **argv = (char **)lua_touserdata(L, 2);
    int code;
    /* Lua's own env handling is replaced by set_path */
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
    luaL_openlibs(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    for (const luaL_Reg *r = preloads; r->name != NULL; r++) {
        lua_pushcfunction(L, r->func);
        lua_setfield(L, -2, r->name);
    }
    for (size_t i = 0; i < sizeof net_modules / sizeof net_modules[0]; i++) {
        lua_pushstring(L, net_modules[i][1]);
        lua_pushcclosure(L, net_loader, 1);
        lua_setfield(L, -2, net_modules[i][0]);
    }
    lua_pop(L, 1);

    const char *cmd = argc > 1 ? argv[1] : "help";
    if (strcmp(cmd, "run") == 0) {
        code = run_script(L, argc, argv);
    } else if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        code = print_version();
    } else if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        fputs(usage_text, stdout);
        code = EXIT_SUCCESS;
    } else {
        fprintf(stderr, "%s: unknown command '%s'\n%s", progname, cmd, usage_text);
        code = EXIT_USAGE;
    }
    lua_pushinteger(L, code);
    return 1;
}

int main(int argc, char **argv) {
    int code;
    resclean_guard_stdio();
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        fprintf(stderr, "%s: cannot create Lua state: not enough memory\n", progname);
        return EXIT_FAILURE;
    }
    lua_pushcfunction(L, pmain);
    lua_pushinteger(L, argc);
    lua_pushlightuserdata(L, argv);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        fprintf(stderr, "%s: %s\n", progname, lua_tostring(L, -1));
        code = EXIT_FAILURE;
    } else {
        code = (int)lua_tointeger(L, -1);
    }
    fflush(stdout);
    lua_close(L);
    net_cleanup();
    return code;
}
