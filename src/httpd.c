/*
 * resclean.httpd: the long-running sweep's /metrics and /healthz endpoint.
 *
 * A thread of its own answers, so a scrape is served while the sweep waits
 * on the database or the storage, and the sweep never waits for a scraper:
 * the thread never touches Lua. The sweep hands it a snapshot (the metrics
 * text, and a heartbeat: "healthy until monotonic time T, else this reason")
 * under a mutex held only for a copy. A stalled loop stops beating, and
 * /healthz turns 503 with the reason while the thread still answers.
 *
 * Bounded: at most max_connections open (more wait in the kernel's backlog),
 * a request of at most max_request bytes (else 431), a deadline per
 * connection from its accept (a client that sends nothing, or reads
 * nothing, is closed when it passes), non-blocking sockets throughout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>

#include <lauxlib.h>
#include <lua.h>

#include "resclean.h"

#define HTTPD_MAX_CONNS 64
#define HTTPD_META "resclean.httpd"

typedef struct conn {
    int fd; /* -1: free */
    double deadline;
    char *in;
    size_t inlen;
    char *out;
    size_t outlen, outoff;
    int writing;
} conn;

typedef struct server {
    int lfd, wake[2];
    pthread_t thread;
    int started;
    int max_conns;
    size_t max_request;
    double timeout;
    conn conns[HTTPD_MAX_CONNS];
    pthread_mutex_t mu; /* guards what follows */
    char *metrics;
    size_t metrics_len;
    double due;
    char ok[256], late[512];
    long long accepted, answered, timed_out, too_large;
} server;

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void conn_close(conn *c) {
    if (c->fd >= 0)
        close(c->fd);
    free(c->in);
    free(c->out);
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

/* Queue an answer on c; NULL body: none (HEAD). Out of memory: the
 * connection is closed unanswered. */
static void respond(conn *c, int status, const char *ctype, const char *body, size_t blen, int head) {
    const char *text = status == 200   ? "OK"
                       : status == 404 ? "Not Found"
                       : status == 405 ? "Method Not Allowed"
                       : status == 431 ? "Request Header Fields Too Large"
                       : status == 400 ? "Bad Request"
                                       : "Service Unavailable";
    char hdr[256];
    int hl = snprintf(hdr, sizeof hdr,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                      status, text, ctype, blen);
    size_t n = (size_t)hl + (head ? 0 : blen);
    c->out = malloc(n ? n : 1);
    if (c->out == NULL) {
        conn_close(c);
        return;
    }
    memcpy(c->out, hdr, (size_t)hl);
    if (!head && blen > 0)
        memcpy(c->out + hl, body, blen);
    c->outlen = n;
    c->outoff = 0;
    c->writing = 1;
}

static const char TEXT[] = "text/plain; charset=utf-8";

/* The request in c->in is whole: route it. */
static void route(server *s, conn *c) {
    char method[8], path[256];
    const char *sp = memchr(c->in, ' ', c->inlen);
    const char *line_end = strstr(c->in, "\r\n");
    if (sp == NULL || line_end == NULL || sp > line_end || (size_t)(sp - c->in) >= sizeof method) {
        respond(c, 400, TEXT, "bad request\n", 12, 0);
        return;
    }
    memcpy(method, c->in, (size_t)(sp - c->in));
    method[sp - c->in] = '\0';
    const char *p = sp + 1;
    size_t pl = strcspn(p, " ?\r");
    if (pl >= sizeof path)
        pl = sizeof path - 1;
    memcpy(path, p, pl);
    path[pl] = '\0';
    int head = strcmp(method, "HEAD") == 0;
    int is_metrics = strcmp(path, "/metrics") == 0, is_health = strcmp(path, "/healthz") == 0;
    if (!is_metrics && !is_health) {
        const char *m = "not found: GET /metrics or /healthz\n";
        respond(c, 404, TEXT, m, strlen(m), head);
        return;
    }
    if (!head && strcmp(method, "GET") != 0) {
        const char *m = "method not allowed: GET or HEAD\n";
        respond(c, 405, TEXT, m, strlen(m), 0);
        return;
    }
    pthread_mutex_lock(&s->mu);
    if (is_metrics) {
        respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", s->metrics ? s->metrics : "",
                s->metrics_len, head);
    } else {
        char body[640];
        double now = mono();
        int ok = now <= s->due;
        int n =
            ok ? snprintf(body, sizeof body, "ok: %s\n", s->ok)
               : snprintf(body, sizeof body, "stale: %s (overdue by %.0f s)\n", s->late, now - s->due);
        if (n < 0)
            n = 0;
        if ((size_t)n >= sizeof body)
            n = (int)sizeof body - 1;
        respond(c, ok ? 200 : 503, TEXT, body, (size_t)n, head);
    }
    s->answered++;
    pthread_mutex_unlock(&s->mu);
}

static void on_readable(server *s, conn *c) {
    for (;;) {
        if (c->inlen >= s->max_request) {
            pthread_mutex_lock(&s->mu);
            s->too_large++;
            pthread_mutex_unlock(&s->mu);
            const char *m = "request too large\n";
            respond(c, 431, TEXT, m, strlen(m), 0);
            return;
        }
        ssize_t n = read(c->fd, c->in + c->inlen, s->max_request - c->inlen);
        if (n > 0) {
            c->inlen += (size_t)n;
            c->in[c->inlen] = '\0';
            if (strstr(c->in, "\r\n\r\n") != NULL || strstr(c->in, "\n\n") != NULL) {
                route(s, c);
                return;
            }
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        conn_close(c); /* closed before a whole request, or an error */
        return;
    }
}

static void on_writable(conn *c) {
    while (c->outoff < c->outlen) {
        ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
        if (n > 0) {
            c->outoff += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        break;
    }
    conn_close(c);
}

static void accept_all(server *s, int *nconns) {
    while (*nconns < s->max_conns) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return; /* EAGAIN, or a connection that went away meanwhile */
        conn *c = NULL;
        for (int i = 0; i < s->max_conns && c == NULL; i++)
            if (s->conns[i].fd < 0)
                c = &s->conns[i];
        c->in = malloc(s->max_request + 1);
        if (c->in == NULL) {
            close(fd);
            return;
        }
        c->fd = fd;
        c->deadline = mono() + s->timeout;
        c->in[0] = '\0';
        (*nconns)++;
        pthread_mutex_lock(&s->mu);
        s->accepted++;
        pthread_mutex_unlock(&s->mu);
    }
}

static void *serve(void *arg) {
    server *s = arg;
    struct pollfd pfd[HTTPD_MAX_CONNS + 2];
    int idx[HTTPD_MAX_CONNS + 2];
    for (;;) {
        int nconns = 0, np = 2;
        double now = mono(), next = now + 1.0;
        for (int i = 0; i < s->max_conns; i++) {
            conn *c = &s->conns[i];
            if (c->fd < 0)
                continue;
            nconns++;
            pfd[np].fd = c->fd;
            pfd[np].events = c->writing ? POLLOUT : POLLIN;
            pfd[np].revents = 0;
            idx[np++] = i;
            if (c->deadline < next)
                next = c->deadline;
        }
        pfd[0].fd = s->wake[0];
        pfd[0].events = POLLIN;
        pfd[0].revents = 0;
        pfd[1].fd = s->lfd;
        pfd[1].events = nconns < s->max_conns ? POLLIN : 0;
        pfd[1].revents = 0;
        int ms = (int)((next - now) * 1000) + 1;
        if (ms < 0)
            ms = 0;
        if (poll(pfd, (nfds_t)np, ms) < 0 && errno != EINTR)
            break;
        if (pfd[0].revents)
            break;
        for (int k = 2; k < np; k++) {
            conn *c = &s->conns[idx[k]];
            if (pfd[k].revents == 0 || c->fd < 0)
                continue;
            if (c->writing)
                on_writable(c);
            else
                on_readable(s, c);
            if (c->fd >= 0 && c->writing)
                on_writable(c); /* most answers fit the socket's buffer at once */
        }
        now = mono();
        for (int i = 0; i < s->max_conns; i++) {
            if (s->conns[i].fd >= 0 && now > s->conns[i].deadline) {
                conn_close(&s->conns[i]);
                pthread_mutex_lock(&s->mu);
                s->timed_out++;
                pthread_mutex_unlock(&s->mu);
            }
        }
        if (pfd[1].revents & POLLIN) {
            nconns = 0;
            for (int i = 0; i < s->max_conns; i++)
                nconns += s->conns[i].fd >= 0;
            accept_all(s, &nconns);
        }
    }
    return NULL;
}

static server *check_server(lua_State *L) {
    server **ud = luaL_checkudata(L, 1, HTTPD_META);
    luaL_argcheck(L, *ud != NULL, 1, "the metrics server is closed");
    return *ud;
}

static void server_free(server *s) {
    if (s->started) {
        char b = 1;
        ssize_t w = write(s->wake[1], &b, 1);
        (void)w;
        pthread_join(s->thread, NULL);
    }
    for (int i = 0; i < HTTPD_MAX_CONNS; i++)
        if (s->conns[i].fd >= 0 || s->conns[i].in || s->conns[i].out)
            conn_close(&s->conns[i]);
    if (s->lfd >= 0)
        close(s->lfd);
    if (s->wake[0] >= 0)
        close(s->wake[0]);
    if (s->wake[1] >= 0)
        close(s->wake[1]);
    pthread_mutex_destroy(&s->mu);
    free(s->metrics);
    free(s);
}

static int fail(lua_State *L, const char *what, int en) {
    luaL_pushfail(L);
    lua_pushfstring(L, "%s: %s", what, strerror(en));
    lua_pushinteger(L, en);
    return 3;
}

static int opt_number(lua_State *L, const char *name, double dflt, double lo, double hi) {
    lua_getfield(L, 1, name);
    double v = luaL_optnumber(L, -1, dflt);
    lua_pop(L, 1);
    if (v < lo || v > hi)
        return luaL_error(L, "httpd.start: %s must be from %f to %f", name, lo, hi);
    lua_pushnumber(L, v);
    return 1;
}

/* start{host=, port=, max_connections=8, max_request=8192, timeout=5}
 * -> server, or nil, message, errno (EADDRINUSE: the address is in use). */
static int httpd_start(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "host");
    const char *host = luaL_optstring(L, -1, "127.0.0.1");
    lua_getfield(L, 1, "port");
    lua_Integer port = luaL_checkinteger(L, -1);
    luaL_argcheck(L, port >= 0 && port <= 65535, 1, "port must be from 0 to 65535");
    opt_number(L, "max_connections", 8, 1, HTTPD_MAX_CONNS);
    opt_number(L, "max_request", 8192, 64, 1 << 20);
    opt_number(L, "timeout", 5, 0.01, 3600);
    int max_conns = (int)lua_tonumber(L, -3);
    size_t max_request = (size_t)lua_tonumber(L, -2);
    double timeout = lua_tonumber(L, -1);

    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char ports[16];
    snprintf(ports, sizeof ports, "%d", (int)port);
    int gai = getaddrinfo(host, ports, &hints, &ai);
    if (gai != 0) {
        luaL_pushfail(L);
        lua_pushfstring(L, "%s: %s", host, gai_strerror(gai));
        lua_pushinteger(L, EINVAL);
        return 3;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(ai);
        return fail(L, "socket", errno);
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 16) != 0) {
        int en = errno;
        freeaddrinfo(ai);
        close(fd);
        return fail(L, "bind", en);
    }
    freeaddrinfo(ai);

    server **ud = lua_newuserdatauv(L, sizeof *ud, 0);
    *ud = NULL;
    luaL_setmetatable(L, HTTPD_META);
    server *s = calloc(1, sizeof *s);
    if (s == NULL) {
        close(fd);
        return luaL_error(L, "httpd.start: out of memory");
    }
    s->lfd = fd;
    s->wake[0] = s->wake[1] = -1;
    s->max_conns = max_conns;
    s->max_request = max_request;
    s->timeout = timeout;
    for (int i = 0; i < HTTPD_MAX_CONNS; i++)
        s->conns[i].fd = -1;
    pthread_mutex_init(&s->mu, NULL);
    snprintf(s->ok, sizeof s->ok, "starting");
    snprintf(s->late, sizeof s->late, "no heartbeat from the sweep loop yet");
    s->due = mono() + 60;
    *ud = s;
    if (pipe2(s->wake, O_CLOEXEC) != 0)
        return fail(L, "pipe", errno);
    /* The thread takes no signal: stop signals reach the sweep's own wait. */
    sigset_t all, orig;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &orig);
    int rc = pthread_create(&s->thread, NULL, serve, s);
    pthread_sigmask(SIG_SETMASK, &orig, NULL);
    if (rc != 0)
        return fail(L, "pthread_create", rc);
    s->started = 1;
    return 1;
}

/* port() -> the port bound (the one chosen when 0 was asked) */
static int server_port(lua_State *L) {
    server *s = check_server(L);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(s->lfd, (struct sockaddr *)&ss, &len) != 0)
        return fail(L, "getsockname", errno);
    int port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                        : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    lua_pushinteger(L, port);
    return 1;
}

/* set_metrics(text): what GET /metrics answers from now on */
static int server_set_metrics(lua_State *L) {
    server *s = check_server(L);
    size_t len;
    const char *text = luaL_checklstring(L, 2, &len);
    char *copy = malloc(len + 1);
    if (copy == NULL)
        return luaL_error(L, "httpd: out of memory");
    memcpy(copy, text, len + 1);
    pthread_mutex_lock(&s->mu);
    char *old = s->metrics;
    s->metrics = copy;
    s->metrics_len = len;
    pthread_mutex_unlock(&s->mu);
    free(old);
    return 0;
}

/* beat(seconds, ok, late): /healthz answers 200 "ok: <ok>" for the next
 * `seconds`, then 503 "stale: <late> (overdue by N s)" until the next beat. */
static int server_beat(lua_State *L) {
    server *s = check_server(L);
    double secs = luaL_checknumber(L, 2);
    const char *ok = luaL_checkstring(L, 3);
    const char *late = luaL_checkstring(L, 4);
    luaL_argcheck(L, secs >= 0 && secs < 1e9, 2, "expected seconds >= 0");
    pthread_mutex_lock(&s->mu);
    s->due = mono() + secs;
    snprintf(s->ok, sizeof s->ok, "%s", ok);
    snprintf(s->late, sizeof s->late, "%s", late);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* stats() -> {accepted, answered, timed_out, too_large} */
static int server_stats(lua_State *L) {
    server *s = check_server(L);
    pthread_mutex_lock(&s->mu);
    long long v[4] = {s->accepted, s->answered, s->timed_out, s->too_large};
    pthread_mutex_unlock(&s->mu);
    static const char *const names[] = {"accepted", "answered", "timed_out", "too_large"};
    lua_createtable(L, 0, 4);
    for (int i = 0; i < 4; i++) {
        lua_pushinteger(L, (lua_Integer)v[i]);
        lua_setfield(L, -2, names[i]);
    }
    return 1;
}

static int server_close(lua_State *L) {
    server **ud = luaL_checkudata(L, 1, HTTPD_META);
    if (*ud != NULL) {
        server_free(*ud);
        *ud = NULL;
    }
    return 0;
}

static const luaL_Reg server_methods[] = {{"port", server_port},   {"set_metrics", server_set_metrics},
                                          {"beat", server_beat},   {"stats", server_stats},
                                          {"close", server_close}, {NULL, NULL}};

int luaopen_resclean_httpd(lua_State *L) {
    if (luaL_newmetatable(L, HTTPD_META)) {
        luaL_newlib(L, server_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, server_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, server_close);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushcfunction(L, httpd_start);
    lua_setfield(L, -2, "start");
    return 1;
}
