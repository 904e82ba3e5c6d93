// rtt: per-request latency of several HTTP targets, measured side by side, one request at a time.
//
// Opens one keep-alive connection per target and sends `GET PATH` to each in turn (round robin),
// waiting GAP_US between the end of one response and the next request, so every target idles
// between its requests as it would at a low fixed rate. Because requests to the targets alternate,
// a slow spell of the machine (another tenant, a frequency change) hits them all alike: the
// per-request differences between adjacent requests cancel it. A fixed-rate open-loop tool (oha)
// compares whole runs taken minutes apart instead.
//
// usage: rtt PATH GAP_US COUNT PORT...   (loopback only; COUNT requests per target; at most 8)
// output, one line per target (µs):
//   PORT p50 P p90 P p99 P p999 P paired50 D
// where D is the median of (this target's latency - the first target's latency in the same round):
// the first port is the reference (direct to the upstream).
// Exits non-zero on any error: a refused connection, a short write, a read timeout (5 s), a
// response without Content-Length, a non-200 status.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_TARGETS 8
#define MAX_COUNT 1000000

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

static char buf[1 << 20];

// Sends the request and reads one whole response (head plus Content-Length body).
static int exchange(int fd, const char *req, size_t req_len) {
    if (write(fd, req, req_len) != (ssize_t)req_len) {
        perror("rtt: write");
        return -1;
    }
    long got = 0, need = -1;
    while (need < 0 || got < need) {
        if (got >= (long)sizeof buf - 1) {
            fprintf(stderr, "rtt: response over %zu bytes\n", sizeof buf);
            return -1;
        }
        ssize_t r = read(fd, buf + got, sizeof buf - 1 - got);
        if (r <= 0) {
            perror(r == 0 ? "rtt: connection closed" : "rtt: read");
            return -1;
        }
        got += r;
        buf[got] = 0;
        if (need < 0) {
            char *end = memmem(buf, got, "\r\n\r\n", 4);
            if (!end)
                continue;
            if (strncmp(buf, "HTTP/1.1 200", 12) != 0) {
                fprintf(stderr, "rtt: not a 200: %.40s\n", buf);
                return -1;
            }
            char *cl = strcasestr(buf, "\r\ncontent-length:");
            if (!cl || cl > end) {
                fprintf(stderr, "rtt: no Content-Length\n");
                return -1;
            }
            need = (end - buf) + 4 + atol(cl + 17);
        }
    }
    if (got != need) {
        fprintf(stderr, "rtt: %ld bytes after the response\n", got - need);
        return -1;
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
    int fd[MAX_TARGETS];
    long *lat[MAX_TARGETS];
    for (int t = 0; t < nt; t++) {
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_port = htons((unsigned short)atoi(argv[4 + t]));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fd[t] = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        struct timeval tv = {.tv_sec = 5};
        setsockopt(fd[t], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(fd[t], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (fd[t] < 0 || connect(fd[t], (struct sockaddr *)&a, sizeof a) != 0) {
            perror("rtt: connect");
            return 1;
        }
        lat[t] = malloc(sizeof(long) * n);
        if (!lat[t])
            return 1;
    }
    // One untimed exchange per target first: the connection's first request is not typical.
    for (int t = 0; t < nt; t++)
        if (exchange(fd[t], req, req_len))
            return 1;
    for (int i = 0; i < n; i++) {
        for (int t = 0; t < nt; t++) {
            long next = now_ns() + gap;
            while (now_ns() < next) {
            }
            long t0 = now_ns();
            if (exchange(fd[t], req, req_len))
                return 1;
            lat[t][i] = now_ns() - t0;
        }
    }
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
