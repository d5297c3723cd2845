/*
 * udpsend: send one UDP datagram whose payload is given in hex.
 *
 *     udpsend HOST PORT HEXPAYLOAD      e.g. udpsend 10.0.0.1 4789 08000000000fa000...
 *
 * busybox has no tool that sends arbitrary bytes over UDP; tests use this one to play a
 * hostile guest (a hand-made VXLAN packet aimed at another app's host). IPv4 only. Prints
 * "udpsend: sent N bytes to HOST:PORT" and exits 0, or prints why and exits 1.
 *
 * Build: gcc -static -O2 -o udpsend udpsend.c
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_PAYLOAD 9000

static int nibble(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int main(int argc, char **argv)
{
	static unsigned char buf[MAX_PAYLOAD];
	struct sockaddr_in to;
	size_t len, i;
	char *end;
	long port;
	int fd;

	if (argc != 4) {
		fprintf(stderr, "usage: udpsend HOST PORT HEXPAYLOAD\n");
		return 1;
	}
	memset(&to, 0, sizeof(to));
	to.sin_family = AF_INET;
	if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) {
		fprintf(stderr, "udpsend: %s is not an IPv4 address\n", argv[1]);
		return 1;
	}
	port = strtol(argv[2], &end, 10);
	if (*end || port < 1 || port > 65535) {
		fprintf(stderr, "udpsend: %s is not a port\n", argv[2]);
		return 1;
	}
	to.sin_port = htons((unsigned short)port);
	len = strlen(argv[3]);
	if (len % 2 || len / 2 > sizeof(buf)) {
		fprintf(stderr, "udpsend: the payload must be an even number of hex digits, at most %d bytes\n",
			MAX_PAYLOAD);
		return 1;
	}
	for (i = 0; i < len / 2; i++) {
		int hi = nibble(argv[3][2 * i]), lo = nibble(argv[3][2 * i + 1]);
		if (hi < 0 || lo < 0) {
			fprintf(stderr, "udpsend: the payload is not hex at offset %zu\n", 2 * i);
			return 1;
		}
		buf[i] = (unsigned char)(hi << 4 | lo);
	}
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) {
		perror("udpsend: socket");
		return 1;
	}
	if (sendto(fd, buf, len / 2, 0, (struct sockaddr *)&to, sizeof(to)) != (ssize_t)(len / 2)) {
		perror("udpsend: sendto");
		close(fd);
		return 1;
	}
	close(fd);
	printf("udpsend: sent %zu bytes to %s:%ld\n", len / 2, argv[1], port);
	return 0;
}
