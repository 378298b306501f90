/* imagenet-spark bind shim: make TensorFlow's gRPC server listen on the executor's own address.
 *
 * TensorFlow 2.15 binds its gRPC server to "0.0.0.0:PORT" (grpc_server_lib.cc), whatever host TF_CONFIG
 * names, and offers no setting to change it. Preloaded into the training worker only, this replaces the
 * wildcard address of exactly one bind -- the port in IMAGENET_SPARK_BIND_PORT -- with
 * IMAGENET_SPARK_BIND_ADDR (an IPv4 address becomes ::ffff:a.b.c.d on an IPv6 socket, which gRPC opens
 * dual-stack). Every other bind is passed through untouched. A failed rewritten bind returns its error
 * (EADDRINUSE must reach TensorFlow so the launcher detects a taken port), except when the socket cannot
 * take that address family at all (IPV6_V6ONLY set): then the original bind runs and a line on stderr says so.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

static int real_bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn next;
    if (!next) next = (bind_fn)dlsym(RTLD_NEXT, "bind");
    return next(fd, addr, len);
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    const char *want = getenv("IMAGENET_SPARK_BIND_ADDR");
    const char *port_text = getenv("IMAGENET_SPARK_BIND_PORT");
    if (!want || !port_text || !addr) return real_bind(fd, addr, len);
    in_port_t port = htons((in_port_t)atoi(port_text));
    struct in_addr v4;
    struct in6_addr v6;
    int is_v4 = inet_pton(AF_INET, want, &v4) == 1;
    int is_v6 = !is_v4 && inet_pton(AF_INET6, want, &v6) == 1;
    int rc;
    if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in) && is_v4) {
        struct sockaddr_in copy;
        memcpy(&copy, addr, sizeof copy);
        if (copy.sin_port != port || copy.sin_addr.s_addr != htonl(INADDR_ANY)) return real_bind(fd, addr, len);
        copy.sin_addr = v4;
        return real_bind(fd, (const struct sockaddr *)&copy, sizeof copy);
    }
    if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6) && (is_v4 || is_v6)) {
        struct sockaddr_in6 copy;
        memcpy(&copy, addr, sizeof copy);
        if (copy.sin6_port != port || !IN6_IS_ADDR_UNSPECIFIED(&copy.sin6_addr)) return real_bind(fd, addr, len);
        if (is_v6) {
            copy.sin6_addr = v6;
        } else {
            memset(&copy.sin6_addr, 0, sizeof copy.sin6_addr);
            copy.sin6_addr.s6_addr[10] = 0xff;
            copy.sin6_addr.s6_addr[11] = 0xff;
            memcpy(&copy.sin6_addr.s6_addr[12], &v4, 4);
        }
        rc = real_bind(fd, (const struct sockaddr *)&copy, sizeof copy);
        if (rc != 0 && (errno == EINVAL || errno == EAFNOSUPPORT)) {
            fprintf(stderr, "imagenet-spark bind shim: cannot bind port %s to %s on this socket (errno %d); "
                            "it listens on all interfaces\n", port_text, want, errno);
            return real_bind(fd, addr, len);
        }
        return rc;
    }
    return real_bind(fd, addr, len);
}
