/*
 * A TCP proxy that adds network latency, for the bench's remote profile: every chunk read
 * from one side is written to the other side a fixed time later, in each direction, in
 * order. Requests in flight are not serialised (a chunk waits its own delay, not the one
 * before it), so it behaves like a long wire, not like a slow server. No bandwidth limit,
 * no loss.
 *
 *     delay_proxy DIR UPSTREAM_HOST UPSTREAM_PORT UP_MS [DOWN_MS]
 *
 * UP_MS delays client -> upstream, DOWN_MS (default UP_MS) upstream -> client; a round
 * trip costs UP_MS + DOWN_MS more. Listens on a free loopback port and writes it to
 * DIR/port. On SIGTERM or SIGINT writes DIR/stats (connections, chunks, bytes, and the
 * delay really added: mean and p99) and exits.
 *
 * One thread, ppoll with a nanosecond timeout: a chunk leaves within a few microseconds of
 * its time, and a chunk costs a recv and a send, nothing more. It shares the measured
 * machine with the servers: what a real wire does for free must cost little here (an
 * earlier proxy in Python, a thread per direction, spent 100 to 150 ms of CPU per 1,000
 * keys deleted with verbose DeleteObjects replies, which RGW sends a key per segment).
 * Chunks due together go out in one writev, as a wire delivers a burst.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 65536
#define MAX_CONNS 512
#define MAX_IOV 64
#define MAX_SAMPLES 200000
#define MAX_QUEUED ((size_t)16 << 20) /* stop reading a side that far ahead of its writer */

typedef struct chunk {
    struct chunk *next;
    long long due; /* ns, monotonic */
    long long arrived;
    size_t len, off; /* len 0: end of stream */
    char data[];
} chunk;

typedef struct dir {
    int src, dst;
    long long delay;
    chunk *head, *tail;
    size_t queued;
    int eof_read, done; /* done: end of stream forwarded, or the direction failed */
} dir;

typedef struct conn {
    dir d[2]; /* 0: client -> upstream, 1: upstream -> client */
    int used;
} conn;

static conn conns[MAX_CONNS];
static volatile sig_atomic_t stop;
static long long n_conns, n_chunks, n_bytes;
static double samples[MAX_SAMPLES];
static size_t n_samples;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void write_stats(const char *dirpath) {
    double mean = 0, p99 = 0;
    if (n_samples > 0) {
        qsort(samples, n_samples, sizeof *samples, cmp_double);
        for (size_t i = 0; i < n_samples; i++)
            mean += samples[i];
        mean /= (double)n_samples;
        size_t k = (size_t)((double)n_samples * 0.99);
        p99 = samples[k < n_samples ? k : n_samples - 1];
    }
    char tmp[4096], fin[4096];
    snprintf(tmp, sizeof tmp, "%s/stats.tmp", dirpath);
    snprintf(fin, sizeof fin, "%s/stats", dirpath);
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return;
    fprintf(f, "connections %lld chunks %lld bytes %lld delay_mean_ms %.3f delay_p99_ms %.3f\n", n_conns, n_chunks,
            n_bytes, mean / 1e6, p99 / 1e6);
    fclose(f);
    rename(tmp, fin);
}

static void free_dir(dir *d) {
    while (d->head != NULL) {
        chunk *c = d->head;
        d->head = c->next;
        free(c);
    }
    d->tail = NULL;
    d->queued = 0;
}

static void close_conn(conn *c) {
    close(c->d[0].src);
    close(c->d[0].dst);
    free_dir(&c->d[0]);
    free_dir(&c->d[1]);
    c->used = 0;
}

/* A direction failed (a side reset): both sides go down. */
static void fail_conn(conn *c) {
    shutdown(c->d[0].src, SHUT_RDWR);
    shutdown(c->d[0].dst, SHUT_RDWR);
    c->d[0].done = c->d[1].done = 1;
}

static void enqueue(dir *d, const char *data, size_t len, long long now) {
    chunk *c = malloc(sizeof *c + len);
    if (c == NULL) {
        perror("delay_proxy: malloc");
        exit(1);
    }
    c->next = NULL;
    c->arrived = now;
    c->due = now + d->delay;
    c->len = len;
    c->off = 0;
    memcpy(c->data, data, len);
    if (d->tail != NULL)
        d->tail->next = c;
    else
        d->head = c;
    d->tail = c;
    d->queued += len;
}

/* Read what src has: one chunk (or the end of the stream). */
static void read_side(conn *c, dir *d, long long now) {
    static char buf[CHUNK];
    ssize_t n = recv(d->src, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n < 0) {
        fail_conn(c);
        return;
    }
    if (n == 0)
        d->eof_read = 1;
    enqueue(d, buf, (size_t)n, now);
}

/* Send every chunk that is due, in one writev where it can. Returns whether data waits on a
 * full socket (the caller polls for POLLOUT). */
static int send_due(conn *c, dir *d, long long now) {
    while (d->head != NULL && d->head->due <= now && !d->done) {
        if (d->head->len == 0) { /* end of stream */
            shutdown(d->dst, SHUT_WR);
            d->done = 1;
            free_dir(d);
            return 0;
        }
        struct iovec iov[MAX_IOV];
        int k = 0;
        for (chunk *x = d->head; x != NULL && k < MAX_IOV && x->due <= now && x->len > 0; x = x->next) {
            iov[k].iov_base = x->data + x->off;
            iov[k].iov_len = x->len - x->off;
            k++;
        }
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)k};
        ssize_t n = sendmsg(d->dst, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 1;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fail_conn(c);
            return 0;
        }
        size_t left = (size_t)n;
        while (left > 0) {
            chunk *x = d->head;
            size_t part = x->len - x->off;
            if (left < part) {
                x->off += left;
                return 1; /* the socket took part of it: it is full */
            }
            left -= part;
            if (n_samples < MAX_SAMPLES)
                samples[n_samples++] = (double)(now - x->arrived);
            n_chunks++;
            n_bytes += (long long)x->len;
            d->queued -= x->len;
            d->head = x->next;
            if (d->head == NULL)
                d->tail = NULL;
            free(x);
        }
    }
    return 0;
}

static int connect_upstream(const char *host, const char *port) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res, *ai;
    if (getaddrinfo(host, port, &hints, &res) != 0)
        return -1;
    int fd = -1;
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static void accept_one(int lfd, const char *host, const char *port, long long up, long long down) {
    int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (cfd < 0)
        return;
    int ufd = connect_upstream(host, port);
    int slot = 0;
    while (slot < MAX_CONNS && conns[slot].used)
        slot++;
    if (ufd < 0 || slot == MAX_CONNS) {
        close(cfd);
        if (ufd >= 0)
            close(ufd);
        return;
    }
    int one = 1;
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(ufd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    conn *c = &conns[slot];
    memset(c, 0, sizeof *c);
    c->used = 1;
    c->d[0] = (dir){.src = cfd, .dst = ufd, .delay = up};
    c->d[1] = (dir){.src = ufd, .dst = cfd, .delay = down};
    n_conns++;
}

static int listen_loopback(const char *dirpath) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 512) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        perror("delay_proxy: listen");
        exit(1);
    }
    char tmp[4096], fin[4096];
    snprintf(tmp, sizeof tmp, "%s/port.tmp", dirpath);
    snprintf(fin, sizeof fin, "%s/port", dirpath);
    FILE *f = fopen(tmp, "w");
    if (f == NULL || fprintf(f, "%d", ntohs(a.sin_port)) < 0 || fclose(f) != 0 || rename(tmp, fin) != 0) {
        perror("delay_proxy: port file");
        exit(1);
    }
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: delay_proxy DIR UPSTREAM_HOST UPSTREAM_PORT UP_MS [DOWN_MS]\n");
        return 2;
    }
    long long up = (long long)(atof(argv[4]) * 1e6);
    long long down = argc > 5 ? (long long)(atof(argv[5]) * 1e6) : up;
    sigset_t block, empty;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &empty);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int lfd = listen_loopback(argv[1]);
    static struct pollfd pfds[1 + 4 * MAX_CONNS];
    static struct {
        conn *c;
        dir *d;
        int writing;
    } who[1 + 4 * MAX_CONNS];
    while (!stop) {
        long long now = now_ns(), next = -1;
        nfds_t n = 0;
        pfds[n++] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (int i = 0; i < MAX_CONNS; i++) {
            conn *c = &conns[i];
            if (!c->used)
                continue;
            int full[2] = {send_due(c, &c->d[0], now), send_due(c, &c->d[1], now)};
            if (c->d[0].done && c->d[1].done) {
                close_conn(c);
                continue;
            }
            for (int j = 0; j < 2; j++) {
                dir *d = &c->d[j];
                if (!d->eof_read && !d->done && d->queued < MAX_QUEUED) {
                    who[n].c = c, who[n].d = d, who[n].writing = 0;
                    pfds[n++] = (struct pollfd){.fd = d->src, .events = POLLIN};
                }
                if (full[j]) {
                    who[n].c = c, who[n].d = d, who[n].writing = 1;
                    pfds[n++] = (struct pollfd){.fd = d->dst, .events = POLLOUT};
                } else if (d->head != NULL && !d->done && (next < 0 || d->head->due < next)) {
                    next = d->head->due;
                }
            }
        }
        struct timespec ts, *tsp = NULL;
        if (next >= 0) {
            long long wait = next - now_ns();
            if (wait < 0)
                wait = 0;
            ts.tv_sec = wait / 1000000000LL;
            ts.tv_nsec = wait % 1000000000LL;
            tsp = &ts;
        }
        int r = ppoll(pfds, n, tsp, &empty);
        if (r <= 0)
            continue;
        now = now_ns();
        if (pfds[0].revents & POLLIN)
            accept_one(lfd, argv[2], argv[3], up, down);
        for (nfds_t i = 1; i < n; i++) {
            if (pfds[i].revents == 0 || !who[i].c->used)
                continue;
            if (!who[i].writing)
                read_side(who[i].c, who[i].d, now);
            /* POLLOUT: the next round's send_due sends */
        }
    }
    write_stats(argv[1]);
    return 0;
}
