/*
 * resclean.sys: clocks, an interruptible sleep, stop signals, and a few
 * facts about the process. The signal handler only sets a flag.
 */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "resclean.h"

static volatile sig_atomic_t stop_signal = 0;

static void on_stop(int sig) {
    stop_signal = sig;
}

/* SA_RESETHAND: a second SIGINT/SIGTERM takes the default action, so an
 * operator can always kill a run that is finishing its batch. */
static void install_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

static double clock_seconds(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int sys_time(lua_State *L) {
    lua_pushnumber(L, clock_seconds(CLOCK_REALTIME));
    return 1;
}

static int sys_monotime(lua_State *L) {
    lua_pushnumber(L, clock_seconds(CLOCK_MONOTONIC));
    return 1;
}

/* sleep(seconds) -> true, or false when a stop signal arrived. Signals are
 * blocked between the flag check and pselect, which unblocks them
 * atomically, so a signal can never slip in unseen. */
static int sys_sleep(lua_State *L) {
    double secs = luaL_checknumber(L, 1);
    sigset_t block, orig;
    luaL_argcheck(L, secs >= 0 && secs < 1e9, 1, "expected seconds >= 0");
    double deadline = clock_seconds(CLOCK_MONOTONIC) + secs;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &orig);
    for (;;) {
        double left = deadline - clock_seconds(CLOCK_MONOTONIC);
        if (stop_signal || left <= 0) break;
        struct timespec ts;
        ts.tv_sec = (time_t)left;
        ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
        pselect(0, NULL, NULL, NULL, &ts, &orig);
    }
    sigprocmask(SIG_SETMASK, &orig, NULL);
    lua_pushboolean(L, !stop_signal);
    return 1;
}

/* stopping() -> false, or the signal's name */
static int sys_stopping(lua_State *L) {
    int sig = stop_signal;
    if (sig == 0) lua_pushboolean(L, 0);
    else lua_pushstring(L, sig == SIGINT ? "SIGINT" : "SIGTERM");
    return 1;
}

/* Forget a seen stop signal and arm the handlers again (tests, and a loop
 * that decides to carry on). */
static int sys_reset_stop(lua_State *L) {
    (void)L;
    stop_signal = 0;
    install_handlers();
    return 0;
}

static int sys_getenv(lua_State *L) {
    lua_pushstring(L, getenv(luaL_checkstring(L, 1)));
    return 1;
}

static int sys_hostname(lua_State *L) {
    char name[256];
    if (gethostname(name, sizeof name) != 0) return luaL_fileresult(L, 0, NULL);
    name[sizeof name - 1] = '\0';
    lua_pushstring(L, name);
    return 1;
}

static int sys_pid(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)getpid());
    return 1;
}

/* rusage() -> {utime, stime, maxrss_kb} of this process */
static int sys_rusage(lua_State *L) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return luaL_fileresult(L, 0, NULL);
    lua_createtable(L, 0, 3);
    lua_pushnumber(L, (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6);
    lua_setfield(L, -2, "utime");
    lua_pushnumber(L, (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6);
    lua_setfield(L, -2, "stime");
    lua_pushinteger(L, (lua_Integer)ru.ru_maxrss);
    lua_setfield(L, -2, "maxrss_kb");
    return 1;
}

static const luaL_Reg sys_funcs[] = {
    {"getenv", sys_getenv},
    {"hostname", sys_hostname},
    {"monotime", sys_monotime},
    {"pid", sys_pid},
    {"reset_stop", sys_reset_stop},
    {"rusage", sys_rusage},
    {"sleep", sys_sleep},
    {"stopping", sys_stopping},
    {"time", sys_time},
    {NULL, NULL}};

int luaopen_resclean_sys(lua_State *L) {
    install_handlers();
    luaL_newlib(L, sys_funcs);
    return 1;
}
