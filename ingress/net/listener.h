/* Listening sockets. Every worker opens its own socket on each address with
 * SO_REUSEPORT, so the kernel spreads connections across workers and no
 * accept lock or hand-off between threads exists. */
#ifndef SG_NET_LISTENER_H
#define SG_NET_LISTENER_H

#include <sys/socket.h>
#include <uv.h>

/* Creates, binds (SO_REUSEADDR + SO_REUSEPORT) and listens on addr, then
 * wraps the socket in tcp (uv_tcp_init'ed here on loop). On failure returns a
 * negative libuv error and leaves no handle open. */
int sg_listener_open(uv_loop_t *loop, uv_tcp_t *tcp, const struct sockaddr *addr, int backlog,
                     uv_connection_cb on_connection);

/* Formats the peer's IP address (no port) into out (INET6_ADDRSTRLEN). */
void sg_peer_address(uv_tcp_t *tcp, char *out, size_t cap);

#endif
