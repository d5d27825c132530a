/*
 * resclean.sys: clocks, an interruptible sleep, stop signals, and a few
 * facts about the process. The signal handler only sets a flag.
 */
#define _GNU_SOURCE /* fallocate, FALLOC_FL_KEEP_SIZE */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "resclean.h"

static volatile sig_atomic_t stop_signal = 0;

static void on_stop(int sig) {
    stop_signal = sig;
}

/* Stop signals: SIGTERM, SIGINT and SIGHUP (a hung-up ssh session ends the
 * run like SIGTERM: the batch in hand finishes, the summary is written).
 * SA_RESETHAND: a second one takes the default action, so an operator can
 * always kill a run that is finishing its batch. SIGPIPE is ignored: a log
 * reader that went away is a failed write the sweep acts on (it stops before
 * deleting more), not a death between a delete and its commit. */
static const int stop_signals[] = {SIGTERM, SIGINT, SIGHUP};
#define N_STOP_SIGNALS (sizeof stop_signals / sizeof stop_signals[0])

static void install_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    for (size_t i = 0; i < N_STOP_SIGNALS; i++)
        sigaction(stop_signals[i], &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* Standard descriptors that were closed when the process started: they are
 * opened on /dev/null (so that a socket can never become "stdout") and
 * remembered, so the log can refuse to run without its audit trail. */
static int stdio_was_closed[3];

void resclean_guard_stdio(void) {
    for (int fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) == -1 && errno == EBADF) {
            int n = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
            if (n >= 0 && n != fd) {
                dup2(n, fd);
                close(n);
            }
            stdio_was_closed[fd] = 1;
        }
    }
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

/* Wait until fd (-1: none) is readable, `secs` have passed or a stop signal
 * arrived: 1 when fd is readable, else 0 (stop_signal tells which). Signals
 * are blocked between the flag check and pselect, which unblocks them
 * atomically, so a signal can never slip in unseen. */
static int wait_fd(int fd, double secs) {
    sigset_t block, orig;
    int ready = 0;
    double deadline = clock_seconds(CLOCK_MONOTONIC) + secs;
    sigemptyset(&block);
    for (size_t i = 0; i < N_STOP_SIGNALS; i++)
        sigaddset(&block, stop_signals[i]);
    sigprocmask(SIG_BLOCK, &block, &orig);
    for (;;) {
        double left = deadline - clock_seconds(CLOCK_MONOTONIC);
        if (stop_signal || (left <= 0 && fd < 0))
            break;
        if (left < 0)
            left = 0;
        fd_set rd;
        FD_ZERO(&rd);
        if (fd >= 0)
            FD_SET(fd, &rd);
        struct timespec ts;
        ts.tv_sec = (time_t)left;
        ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
        int n = pselect(fd + 1, fd >= 0 ? &rd : NULL, NULL, NULL, &ts, &orig);
        if (n > 0) {
            ready = 1;
            break;
        }
        if (fd >= 0 && (n == 0 || errno != EINTR))
            break; /* time is up, or a real error */
    }
    sigprocmask(SIG_SETMASK, &orig, NULL);
    return ready;
}

/* sleep(seconds) -> true, or false when a stop signal arrived. */
static int sys_sleep(lua_State *L) {
    double secs = luaL_checknumber(L, 1);
    luaL_argcheck(L, secs >= 0 && secs < 1e9, 1, "expected seconds >= 0");
    wait_fd(-1, secs);
    lua_pushboolean(L, !stop_signal);
    return 1;
}

/* wait_readable(fd, seconds) -> true when fd is readable, false when the
 * time ran out, nil when a stop signal arrived (also before the call): one
 * wait on a socket (a LISTEN connection), the timer and the stop signals. */
static int sys_wait_readable(lua_State *L) {
    int fd = (int)luaL_checkinteger(L, 1);
    double secs = luaL_checknumber(L, 2);
    luaL_argcheck(L, fd >= 0 && fd < FD_SETSIZE, 1, "expected a descriptor below FD_SETSIZE");
    luaL_argcheck(L, secs >= 0 && secs < 1e9, 2, "expected seconds >= 0");
    int ready = wait_fd(fd, secs);
    if (stop_signal)
        lua_pushnil(L);
    else
        lua_pushboolean(L, ready);
    return 1;
}

/* stopping() -> false, or the signal's name */
static int sys_stopping(lua_State *L) {
    int sig = stop_signal;
    if (sig == 0)
        lua_pushboolean(L, 0);
    else
        lua_pushstring(L, sig == SIGINT ? "SIGINT" : sig == SIGHUP ? "SIGHUP" : "SIGTERM");
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
    if (gethostname(name, sizeof name) != 0)
        return luaL_fileresult(L, 0, NULL);
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
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return luaL_fileresult(L, 0, NULL);
    lua_createtable(L, 0, 3);
    lua_pushnumber(L, (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6);
    lua_setfield(L, -2, "utime");
    lua_pushnumber(L, (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6);
    lua_setfield(L, -2, "stime");
    lua_pushinteger(L, (lua_Integer)ru.ru_maxrss);
    lua_setfield(L, -2, "maxrss_kb");
    return 1;
}

/* stdio_closed(fd) -> true when standard descriptor fd (0-2) was closed at start */
static int sys_stdio_closed(lua_State *L) {
    lua_Integer fd = luaL_checkinteger(L, 1);
    luaL_argcheck(L, fd >= 0 && fd <= 2, 1, "expected 0, 1 or 2");
    lua_pushboolean(L, stdio_was_closed[fd]);
    return 1;
}

/* is_journal(fd) -> true when fd is the stream JOURNAL_STREAM ("dev:ino") names */
static int sys_is_journal(lua_State *L) {
    int fd = (int)luaL_checkinteger(L, 1);
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    int yes = js != NULL && sscanf(js, "%llu:%llu", &dev, &ino) == 2 && fstat(fd, &st) == 0 &&
              (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
    lua_pushboolean(L, yes);
    return 1;
}

/* reserve(fd, n) -> true when room for n more bytes at the end of the
 * regular file fd writes to is allocated (fallocate with KEEP_SIZE: the size
 * stays, the blocks are there for the next writes), false when that cannot
 * be done here (not a regular file, a file system without fallocate), or
 * nil, message when the file system has no room. The sweep asks before a
 * commit whose resource lines must follow it: a full disk then stops the
 * batch before its rows go, not after. */
static int sys_reserve(lua_State *L) {
    int fd = (int)luaL_checkinteger(L, 1);
    lua_Integer n = luaL_checkinteger(L, 2);
    struct stat st;
    off_t at;
    int flags;
    if (n <= 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    flags = fcntl(fd, F_GETFL);
    at = (flags >= 0 && (flags & O_APPEND)) ? st.st_size : lseek(fd, 0, SEEK_CUR);
    if (at < 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (fallocate(fd, FALLOC_FL_KEEP_SIZE, at, (off_t)n) == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (errno == ENOSPC || errno == EDQUOT || errno == EFBIG || errno == EIO) {
        int en = errno;
        lua_pushnil(L);
        lua_pushstring(L, strerror(en));
        return 2;
    }
    lua_pushboolean(L, 0); /* EOPNOTSUPP, ENOSYS, ...: cannot tell here */
    return 1;
}

/* file_kind(path) -> "file", "directory", "fifo", "socket", "device", "link"
 * (lstat: a symlink is "link" only when it dangles; else its target's kind)
 * or nil, message. Lets Lua refuse a FIFO before an open() that would block. */
static int sys_file_kind(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    if (stat(path, &st) != 0) {
        if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) {
            lua_pushstring(L, "link");
            return 1;
        }
        return luaL_fileresult(L, 0, path);
    }
    lua_pushstring(L, S_ISREG(st.st_mode)    ? "file"
                      : S_ISDIR(st.st_mode)  ? "directory"
                      : S_ISFIFO(st.st_mode) ? "fifo"
                      : S_ISSOCK(st.st_mode) ? "socket"
                                             : "device");
    return 1;
}

/* write_file(path [, data [, mode]]) -> true, or nil, message, errno.
 * Replaces path atomically and never writes through a link: data goes to a
 * new file made by mkstemp (O_CREAT|O_EXCL: a name nobody planted, and a link
 * at that name is never followed) in path's folder, is fsync'd, gets mode
 * (default "0644", an octal string or a number, not reduced by the umask so
 * a collector running as another user can read it), then rename() puts it
 * at path. rename replaces the entry at path, a link included, and never
 * follows it; a link (or anything but a regular file) already at path is
 * still refused, not silently replaced: someone put it there. Without data
 * it only checks that a write would work: path is no link and a file can be
 * created in its folder (it is removed again). On failure nothing is left
 * behind and the message names path. */
static int write_file_fail(lua_State *L, const char *path, const char *what, int en) {
    luaL_pushfail(L);
    lua_pushfstring(L, "%s: %s: %s", path, what, strerror(en));
    lua_pushinteger(L, en);
    return 3;
}

static int write_file_mode(lua_State *L) {
    if (lua_type(L, 3) == LUA_TSTRING) {
        const char *s = lua_tostring(L, 3);
        char *end;
        long m = strtol(s, &end, 8);
        luaL_argcheck(L, *s != '\0' && *end == '\0' && m >= 0 && m <= 07777, 3,
                      "expected an octal mode such as \"0644\"");
        return (int)m;
    }
    lua_Integer m = luaL_optinteger(L, 3, 0644);
    luaL_argcheck(L, m >= 0 && m <= 07777, 3, "expected a mode between 0 and 07777");
    return (int)m;
}

static int sys_write_file(lua_State *L) {
    size_t plen, len = 0;
    const char *path = luaL_checklstring(L, 1, &plen);
    const char *data = luaL_optlstring(L, 2, NULL, &len);
    int mode = write_file_mode(L);
    luaL_argcheck(L, plen > 0 && strlen(path) == plen, 1, "expected a file path without NUL bytes");
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (S_ISLNK(st.st_mode)) {
            luaL_pushfail(L);
            lua_pushfstring(L,
                            "%s: is a symbolic link; it is neither followed nor replaced "
                            "(give the link's target as the file, or remove the link)",
                            path);
            lua_pushinteger(L, ELOOP);
            return 3;
        }
        if (!S_ISREG(st.st_mode)) {
            luaL_pushfail(L);
            lua_pushfstring(L,
                            "%s: is not a regular file (a directory or a device?): "
                            "give the path of a file to replace",
                            path);
            lua_pushinteger(L, EINVAL);
            return 3;
        }
    } else if (errno != ENOENT) {
        return write_file_fail(L, path, "cannot check it", errno);
    }
    /* The template lives in a userdata: mkstemp writes into it, and the Lua
     * GC owns it, so a raise later leaks nothing. */
    const char *tpl = lua_pushfstring(L, "%s.tmp.XXXXXX", path);
    size_t tlen = strlen(tpl);
    char *tmp = lua_newuserdatauv(L, tlen + 1, 0); /* tpl tmp */
    memcpy(tmp, tpl, tlen + 1);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return write_file_fail(L, path, "cannot create a temporary file in its folder", errno);
    /* From here to close() no Lua call: nothing may raise while we hold fd. */
    const char *what = NULL;
    int en = 0;
    (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
    if (data == NULL) {
        close(fd);
        unlink(tmp);
        lua_pushboolean(L, 1);
        return 1;
    }
    if (fchmod(fd, (mode_t)mode) != 0)
        what = "cannot set the temporary file's mode", en = errno;
    for (size_t off = 0; what == NULL && off < len;) {
        ssize_t n = write(fd, data + off, len - off);
        if (n >= 0)
            off += (size_t)n;
        else if (errno != EINTR)
            what = "cannot write the temporary file", en = errno;
    }
    if (what == NULL && fsync(fd) != 0)
        what = "cannot sync the temporary file", en = errno;
    if (close(fd) != 0 && what == NULL)
        what = "cannot close the temporary file", en = errno;
    if (what == NULL && rename(tmp, path) != 0)
        what = "cannot rename the temporary file over it", en = errno;
    if (what != NULL) {
        unlink(tmp);
        return write_file_fail(L, path, what, en);
    }
    /* The rename itself reaches the disk with the folder; a failure here
     * (some file systems refuse fsync on a folder) loses nothing written. */
    char *slash = strrchr(tmp, '/');
    if (slash == tmp)
        slash[1] = '\0';
    else if (slash != NULL)
        *slash = '\0';
    int dfd = open(slash != NULL ? tmp : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* notify(state) -> true when sent; false when NOTIFY_SOCKET is unset (not
 * under systemd: nothing to do); false, message when it could not be sent.
 * systemd's readiness protocol without libsystemd: one datagram of
 * "NAME=value" lines to the unix socket NOTIFY_SOCKET names, a path or, with
 * a leading '@', an abstract socket. */
static int sys_notify(lua_State *L) {
    size_t len;
    const char *state = luaL_checklstring(L, 1, &len);
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0') {
        lua_pushboolean(L, 0);
        return 1;
    }
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t plen = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || plen >= sizeof sa.sun_path) {
        lua_pushboolean(L, 0);
        lua_pushfstring(L, "NOTIFY_SOCKET %s: expected an absolute path or @abstract name", path);
        return 2;
    }
    memcpy(sa.sun_path, path, plen);
    if (path[0] == '@')
        sa.sun_path[0] = '\0';
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen + (path[0] == '/'));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        lua_pushboolean(L, 0);
        lua_pushfstring(L, "NOTIFY_SOCKET %s: socket: %s", path, strerror(errno));
        return 2;
    }
    ssize_t n = sendto(fd, state, len, MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
    int en = errno;
    close(fd);
    if (n < 0 || (size_t)n != len) {
        lua_pushboolean(L, 0);
        lua_pushfstring(L, "NOTIFY_SOCKET %s: %s", path, n < 0 ? strerror(en) : "short send");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* same_file(fd1, fd2) -> true when both descriptors are open on one file
 * (device and inode: stdout and stderr merged by 2>&1 or a container runtime). */
static int sys_same_file(lua_State *L) {
    int a = (int)luaL_checkinteger(L, 1), b = (int)luaL_checkinteger(L, 2);
    struct stat sa, sb;
    lua_pushboolean(L, fstat(a, &sa) == 0 && fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
                           sa.st_ino == sb.st_ino);
    return 1;
}

/* isatty(fd) -> true when fd is a terminal */
static int sys_isatty(lua_State *L) {
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
    return 1;
}

static int sys_version(lua_State *L) {
    lua_pushstring(L, RESCLEAN_VERSION);
    return 1;
}

static const luaL_Reg sys_funcs[] = {{"file_kind", sys_file_kind},
                                     {"getenv", sys_getenv},
                                     {"hostname", sys_hostname},
                                     {"is_journal", sys_is_journal},
                                     {"isatty", sys_isatty},
                                     {"notify", sys_notify},
                                     {"same_file", sys_same_file},
                                     {"monotime", sys_monotime},
                                     {"pid", sys_pid},
                                     {"reserve", sys_reserve},
                                     {"reset_stop", sys_reset_stop},
                                     {"rusage", sys_rusage},
                                     {"sleep", sys_sleep},
                                     {"stdio_closed", sys_stdio_closed},
                                     {"stopping", sys_stopping},
                                     {"time", sys_time},
                                     {"version", sys_version},
                                     {"wait_readable", sys_wait_readable},
                                     {"write_file", sys_write_file},
                                     {NULL, NULL}};

int luaopen_resclean_sys(lua_State *L) {
    install_handlers();
    luaL_newlib(L, sys_funcs);
    return 1;
}
