// rtt: per-request latency of several HTTP targets, measured side by side, one request at a time.
//
// Opens one keep-alive connection per target and sends `GET PATH` to each in turn (round robin),
// waiting GAP_US between the end of one response and the next request, so every target idles
// between its requests as it would at a low rate. Because requests to the targets alternate, a
// slow spell of the machine (another tenant, a frequency change) hits them all alike: the
// per-request differences between adjacent requests cancel it. A fixed-rate open-loop tool (oha)
// compares whole runs taken minutes apart instead. Each round starts with the first port (the
// reference), then the others in an order that rotates every round: going first after the
// reference costs a few µs (the gateway core has idled longer), and must not fall on one target.
//
// usage: rtt PATH GAP_US COUNT PORT...   (loopback only; COUNT rounds; at most 8 ports)
// output, one line per target (µs):
//   PORT p50 P p90 P p99 P p999 P paired50 D
// where D is the median of (this target's latency - the first target's latency in the same round):
// the first port is the reference (direct to the upstream).
// RTT_K=k (1..8, default 1): k connections per target, and each round sends k requests to the
// target at once (one per connection) and times each: how a gateway handles requests that overlap.
// RTT_CONNS=m (RTT_K..64, default RTT_K): m connections per target, used in turn, so each one idles
// for m/k rounds between its requests (a round takes ~1.3 ms here with three targets, so m = 8
// idles each connection ~10 ms, as oha's 50 connections at 5,000 req/s do).
// Exits non-zero on any error: a refused connection, a short write, no answer within 5 s, a
// response without Content-Length, a non-200 status.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_TARGETS 8
#define MAX_COUNT 1000000
#define MAX_CONC 8
#define MAX_CONNS 64

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return x < y ? -1 : x > y;
}

static double pct(const long *sorted, int n, double p) {
    int i = (int)(p * (n - 1) + 0.5);
    return sorted[i] / 1e3;
}

#define CONN_BUF (256 * 1024)

// One keep-alive connection and the response being read on it.
struct conn {
    int fd;
    char *buf;
    long got, need;
    long t0;
};

// Sends the request; the response is read by `read_some` until it returns 1.
static int send_req(struct conn *c, const char *req, size_t req_len) {
    c->got = 0;
    c->need = -1;
    c->t0 = now_ns();
    if (write(c->fd, req, req_len) != (ssize_t)req_len) {
        perror("rtt: write");
        return -1;
    }
    return 0;
}

// Reads what is there (one read); 1 once the whole response (head plus Content-Length body) is
// in, 0 if more is due, -1 on an error.
static int read_some(struct conn *c) {
    if (c->got >= CONN_BUF - 1) {
        fprintf(stderr, "rtt: response over %d bytes\n", CONN_BUF);
        return -1;
    }
    ssize_t r = read(c->fd, c->buf + c->got, CONN_BUF - 1 - c->got);
    if (r <= 0) {
        if (r == 0)
            fprintf(stderr, "rtt: connection closed by the peer\n");
        else
            perror("rtt: read");
        return -1;
    }
    c->got += r;
    c->buf[c->got] = 0;
    if (c->need < 0) {
        char *end = memmem(c->buf, c->got, "\r\n\r\n", 4);
        if (!end)
            return 0;
        if (strncmp(c->buf, "HTTP/1.1 200", 12) != 0) {
            fprintf(stderr, "rtt: not a 200: %.40s\n", c->buf);
            return -1;
        }
        char *cl = strcasestr(c->buf, "\r\ncontent-length:");
        if (!cl || cl > end) {
            fprintf(stderr, "rtt: no Content-Length\n");
            return -1;
        }
        c->need = (end - c->buf) + 4 + atol(cl + 17);
    }
    if (c->got < c->need)
        return 0;
    if (c->got > c->need) {
        fprintf(stderr, "rtt: %ld bytes after the response\n", c->got - c->need);
        return -1;
    }
    return 1;
}

// Sends the request on each of `k` connections back to back, then reads the answers as they
// come; `out[j]` is connection j's latency (its write to the end of its response).
static int exchange(struct conn **cs, int k, const char *req, size_t req_len, long *out) {
    struct pollfd pfd[MAX_CONC];
    for (int j = 0; j < k; j++)
        if (send_req(cs[j], req, req_len))
            return -1;
    int left = k;
    for (int j = 0; j < k; j++)
        pfd[j] = (struct pollfd){.fd = cs[j]->fd, .events = POLLIN};
    while (left > 0) {
        int n = poll(pfd, k, 5000);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            perror("rtt: poll");
            return -1;
        }
        if (n == 0) {
            fprintf(stderr, "rtt: no answer within 5 s\n");
            return -1;
        }
        for (int j = 0; j < k; j++) {
            if (!(pfd[j].revents & (POLLIN | POLLERR | POLLHUP)))
                continue;
            int done = read_some(cs[j]);
            if (done < 0)
                return -1;
            if (done) {
                out[j] = now_ns() - cs[j]->t0;
                pfd[j].fd = -1;
                left--;
            }
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 5 || argc - 4 > MAX_TARGETS) {
        fprintf(stderr, "usage: rtt PATH GAP_US COUNT PORT... (1-%d ports)\n", MAX_TARGETS);
        return 2;
    }
    const char *path = argv[1];
    long gap = atol(argv[2]) * 1000;
    int n = atoi(argv[3]);
    int nt = argc - 4;
    if (n < 1 || n > MAX_COUNT || gap < 0) {
        fprintf(stderr, "rtt: COUNT must be 1..%d and GAP_US >= 0\n", MAX_COUNT);
        return 2;
    }
    char req[512];
    int req_len = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (req_len <= 0 || req_len >= (int)sizeof req) {
        fprintf(stderr, "rtt: path too long\n");
        return 2;
    }
    const char *kenv = getenv("RTT_K");
    int k = kenv ? atoi(kenv) : 1;
    if (k < 1 || k > MAX_CONC) {
        fprintf(stderr, "rtt: RTT_K must be 1..%d\n", MAX_CONC);
        return 2;
    }
    const char *menv = getenv("RTT_CONNS");
    int m = menv ? atoi(menv) : k;
    if (m < k || m > MAX_CONNS) {
        fprintf(stderr, "rtt: RTT_CONNS must be RTT_K..%d\n", MAX_CONNS);
        return 2;
    }
    static struct conn cs[MAX_TARGETS][MAX_CONNS];
    long *lat[MAX_TARGETS];
    for (int t = 0; t < nt; t++) {
        for (int j = 0; j < m; j++) {
            struct sockaddr_in a = {0};
            a.sin_family = AF_INET;
            a.sin_port = htons((unsigned short)atoi(argv[4 + t]));
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
                fprintf(stderr, "rtt: connect to port %s: %s\n", argv[4 + t], strerror(errno));
                return 1;
            }
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            cs[t][j] = (struct conn){.fd = fd, .buf = malloc(CONN_BUF)};
            if (!cs[t][j].buf)
                return 1;
        }
        lat[t] = malloc(sizeof(long) * n * k);
        if (!lat[t])
            return 1;
    }
    // Round i uses connections i*k .. i*k+k-1 (mod m) of each target.
    struct conn *use[MAX_CONC];
    // One untimed exchange per connection first: a connection's first request is not typical.
    for (int t = 0; t < nt; t++)
        for (int j = 0; j < m; j++) {
            use[0] = &cs[t][j];
            if (exchange(use, 1, req, req_len, lat[t]))
                return 1;
        }
    for (int i = 0; i < n; i++) {
        for (int pos = 0; pos < nt; pos++) {
            // The reference first, then the others rotated by one each round.
            int t = pos == 0 ? 0 : 1 + (pos - 1 + i) % (nt - 1);
            for (int j = 0; j < k; j++)
                use[j] = &cs[t][((long)i * k + j) % m];
            long next = now_ns() + gap;
            while (now_ns() < next) {
            }
            if (exchange(use, k, req, req_len, lat[t] + (long)i * k)) {
                fprintf(stderr, "rtt: (port %s, round %d)\n", argv[4 + t], i);
                return 1;
            }
        }
    }
    n *= k;
    long *diff = malloc(sizeof(long) * n);
    if (!diff)
        return 1;
    // Backwards: the reference (target 0) is sorted last, after every difference against it.
    double paired[MAX_TARGETS];
    for (int t = nt - 1; t >= 0; t--) {
        for (int i = 0; i < n; i++)
            diff[i] = lat[t][i] - lat[0][i];
        qsort(diff, n, sizeof(long), cmp_long);
        paired[t] = pct(diff, n, 0.50);
        qsort(lat[t], n, sizeof(long), cmp_long);
    }
    for (int t = 0; t < nt; t++)
        printf("%s p50 %.1f p90 %.1f p99 %.1f p999 %.1f paired50 %.1f\n", argv[4 + t],
               pct(lat[t], n, 0.50), pct(lat[t], n, 0.90), pct(lat[t], n, 0.99),
               pct(lat[t], n, 0.999), paired[t]);
    return 0;
}
