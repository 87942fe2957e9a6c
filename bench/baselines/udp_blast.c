/*
 * UDP throughput ceiling for `npm run bench`: the same loopback path softroce
 * uses, driven from C with sendmmsg/recvmmsg in batches of 32.
 *   udp_blast recv ADDR PORT SECONDS        prints "bytes=N secs=S"
 *   udp_blast send ADDR PORT SIZE SECONDS
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 32

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
	if (argc < 5) {
		fprintf(stderr, "usage: udp_blast recv ADDR PORT SECONDS | send ADDR PORT SIZE SECONDS\n");
		return 2;
	}
	int recv_mode = strcmp(argv[1], "recv") == 0;
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[3])) };
	inet_pton(AF_INET, argv[2], &a.sin_addr);
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	int bufsz = 8 << 20;
	setsockopt(fd, SOL_SOCKET, recv_mode ? SO_RCVBUF : SO_SNDBUF, &bufsz, sizeof bufsz);
	static char bufs[BATCH][65536];
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	memset(msgs, 0, sizeof msgs);
	if (recv_mode) {
		double secs = atof(argv[4]);
		if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); return 1; }
		struct timeval tv = { .tv_sec = 0, .tv_usec = 200000 };
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		for (int i = 0; i < BATCH; i++) {
			iov[i].iov_base = bufs[i];
			iov[i].iov_len = sizeof bufs[i];
			msgs[i].msg_hdr.msg_iov = &iov[i];
			msgs[i].msg_hdr.msg_iovlen = 1;
		}
		printf("ready\n");
		fflush(stdout);
		long long bytes = 0;
		double t0 = 0, last = 0;
		for (;;) {
			int n = recvmmsg(fd, msgs, BATCH, 0, NULL);
			double t = now();
			if (n <= 0) {
				if (t0 && t - last > 0.15) break;
				continue;
			}
			if (!t0) t0 = t;
			last = t;
			for (int i = 0; i < n; i++) bytes += msgs[i].msg_len;
			if (t - t0 > secs) break;
		}
		printf("bytes=%lld secs=%.6f\n", bytes, last - t0);
		return 0;
	}
	int size = atoi(argv[4]);
	double secs = atof(argv[5]);
	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_base = bufs[i];
		iov[i].iov_len = size;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
		msgs[i].msg_hdr.msg_name = &a;
		msgs[i].msg_hdr.msg_namelen = sizeof a;
	}
	double t0 = now();
	while (now() - t0 < secs) sendmmsg(fd, msgs, BATCH, 0);
	return 0;
}
