/*
 * UDP busy-poll ping-pong, the latency floor for `npm run bench` (issue 15: softroce's busy-poll
 * ib_send_lat at most 2x half this round trip). Two processes on loopback, each spinning on a
 * non-blocking recv (MSG_DONTWAIT), as a busy-polling verbs user spins on ibv_poll_cq.
 *   udp_pingpong [ADDR [PORT [ITERS [SIZE]]]]     forks the echo side, then prints
 *     "rtt_us=<mean> median_us=<median> p99_us=<p99> iters=<n> size=<bytes>"
 *   udp_pingpong echo ADDR PORT ITERS SIZE         the echo side alone (another shell): echoes until
 *                                                  idle for 1 s (ITERS, SIZE: ignored)
 *   udp_pingpong ping ADDR PORT ITERS SIZE         the measuring side alone
 * Defaults: 127.0.0.1, port 18515, 20000 round trips, 2 bytes. The first 100 round trips warm up and
 * are not counted. Every wait is bounded: a round trip that takes over 1 s (a lost datagram) ends
 * the run with exit status 1. Build: cc -O2 -o udp_pingpong udp_pingpong.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 100
#define WAIT_LIMIT_S 1.0

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b) {
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* A UDP socket bound to addr:port (port 0: any), or -1. */
static int open_bound(const char *addr, int port) {
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	if (inet_pton(AF_INET, addr, &a.sin_addr) != 1) { fprintf(stderr, "bad address %s\n", addr); return -1; }
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) { perror("socket"); return -1; }
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); close(fd); return -1; }
	return fd;
}

/* Spins until a datagram arrives (its length, its sender in *from) or WAIT_LIMIT_S passes (-1). */
static ssize_t spin_recv(int fd, char *buf, size_t cap, struct sockaddr_in *from) {
	double start = 0;
	for (unsigned long spins = 0;; spins++) {
		socklen_t fl = sizeof *from;
		ssize_t r = recvfrom(fd, buf, cap, MSG_DONTWAIT, (struct sockaddr *)from, &fl);
		if (r >= 0) return r;
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) { perror("recvfrom"); return -1; }
		/* the clock only every 1024 empty polls: the spin itself stays a bare syscall */
		if ((spins & 1023) == 0) {
			double t = now();
			if (start == 0) start = t;
			else if (t - start > WAIT_LIMIT_S) return -1;
		}
	}
}

/*
 * Echoes every datagram back to its sender until none has come for WAIT_LIMIT_S (after the first,
 * which may take up to 10 s: the other side starting). fd: bound already (fork mode), or -1.
 */
static int echo(int fd, const char *addr, int port) {
	if (fd < 0) fd = open_bound(addr, port);
	if (fd < 0) return 1;
	char buf[65536];
	struct sockaddr_in from;
	for (long got = 0, idle = 0;;) {
		ssize_t r = spin_recv(fd, buf, sizeof buf, &from);
		if (r < 0) {
			if (got > 0 || ++idle >= 10) break;
			continue;
		}
		got++;
		if (sendto(fd, buf, r, 0, (struct sockaddr *)&from, sizeof from) < 0) { perror("sendto"); return 1; }
	}
	close(fd);
	return 0;
}

/* Sends ITERS + WARMUP datagrams of SIZE bytes to addr:port, one at a time, timing each round trip. */
static int ping(const char *addr, int port, long iters, int size) {
	int fd = open_bound(addr, 0);
	if (fd < 0) return 1;
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, addr, &to.sin_addr);
	char out[65536], in[65536];
	memset(out, 'p', sizeof out);
	double *rtt = malloc(sizeof(double) * iters);
	if (!rtt) return 1;
	struct sockaddr_in from;
	/* the echo side may not be bound yet: resend the first datagram every 10 ms, for up to 10 s */
	for (int tries = 0;; tries++) {
		sendto(fd, out, size, 0, (struct sockaddr *)&to, sizeof to);
		double t0 = now();
		ssize_t r = -1;
		while (r < 0 && now() - t0 < 0.01) {
			socklen_t fl = sizeof from;
			r = recvfrom(fd, in, sizeof in, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
		}
		if (r >= 0) break;
		if (tries >= 1000) { fprintf(stderr, "ping: no echo\n"); return 1; }
	}
	/* echoes of the resent first datagram, if any: 20 ms to arrive, then dropped */
	for (double t0 = now(); now() - t0 < 0.02;) {
		socklen_t fl = sizeof from;
		recvfrom(fd, in, sizeof in, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
	}
	for (long i = 1; i < iters + WARMUP; i++) {
		double t0 = now();
		if (sendto(fd, out, size, 0, (struct sockaddr *)&to, sizeof to) < 0) { perror("sendto"); return 1; }
		if (spin_recv(fd, in, sizeof in, &from) < 0) { fprintf(stderr, "ping: timeout after %ld\n", i); return 1; }
		if (i >= WARMUP) rtt[i - WARMUP] = (now() - t0) * 1e6;
	}
	long n = iters;
	double sum = 0;
	for (long i = 0; i < n; i++) sum += rtt[i];
	qsort(rtt, n, sizeof *rtt, cmp_double);
	printf("rtt_us=%.2f median_us=%.2f p99_us=%.2f iters=%ld size=%d\n", sum / n, rtt[n / 2], rtt[(long)(n * 0.99)], n, size);
	free(rtt);
	close(fd);
	return 0;
}

int main(int argc, char **argv) {
	if (argc > 1 && (strcmp(argv[1], "echo") == 0 || strcmp(argv[1], "ping") == 0)) {
		if (argc < 6) { fprintf(stderr, "usage: udp_pingpong echo|ping ADDR PORT ITERS SIZE\n"); return 2; }
		long iters = atol(argv[4]);
		int size = atoi(argv[5]);
		if (iters < 1 || size < 1 || size > 65000) { fprintf(stderr, "bad ITERS or SIZE\n"); return 2; }
		return strcmp(argv[1], "echo") == 0 ? echo(-1, argv[2], atoi(argv[3])) : ping(argv[2], atoi(argv[3]), iters, size);
	}
	const char *addr = argc > 1 ? argv[1] : "127.0.0.1";
	int port = argc > 2 ? atoi(argv[2]) : 18515;
	long iters = argc > 3 ? atol(argv[3]) : 20000;
	int size = argc > 4 ? atoi(argv[4]) : 2;
	if (iters < 1 || size < 1 || size > 65000) { fprintf(stderr, "usage: udp_pingpong [ADDR [PORT [ITERS [SIZE]]]]\n"); return 2; }
	/* bound before the fork: the first ping cannot arrive before the echo side's socket exists */
	int efd = open_bound(addr, port);
	if (efd < 0) return 1;
	fflush(stdout);
	pid_t child = fork();
	if (child < 0) { perror("fork"); return 1; }
	if (child == 0) _exit(echo(efd, addr, port));
	close(efd);
	int rc = ping(addr, port, iters, size);
	kill(child, SIGTERM); /* it would end WAIT_LIMIT_S after the last ping anyway */
	waitpid(child, NULL, 0);
	return rc;
}
