/* PROXY protocol v1 (text) and v2 (binary) header parsing, as sent by a load
 * balancer in front of sandgate to carry the real client address
 * (https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt).
 * Pure functions over caller bytes: no allocation, no I/O, no global state. */
#ifndef SG_NET_PROXY_PROTOCOL_H
#define SG_NET_PROXY_PROTOCOL_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

/* Longest v1 header, CRLF included (the spec's bound). */
#define SG_PROXY_V1_MAX 107
/* Longest v2 header we accept: 16 fixed bytes + address block + TLVs. The
 * spec allows 16 + 65535; we cap it so a connection never buffers more. */
#define SG_PROXY_V2_MAX 4096
/* A read buffer this large always holds a complete header (or proves there
 * is none): 0 is never returned for len >= SG_PROXY_HEADER_MAX. */
#define SG_PROXY_HEADER_MAX SG_PROXY_V2_MAX

typedef struct {
    int version; /* 1 or 2 */
    int local;   /* v2 LOCAL command or v1 "UNKNOWN": no addresses, use the socket's */
    struct sockaddr_storage src; /* client address (port set) when !local */
    struct sockaddr_storage dst;
} sg_proxy_header_t;

/* Parses a PROXY header at the start of data[0..len).
 *
 * Returns the header length (> 0, <= len) when a complete valid header is
 * present; the caller's payload starts at data + that length. Returns 0 when
 * data[0..len) is a valid prefix of some header and more bytes are needed
 * (len == 0 included). Returns -1 when no valid header can start with these
 * bytes; the answer is final, so callers fail fast without waiting for more.
 * Results are prefix-consistent: once -1 or a length h is returned, every
 * longer buffer with the same first bytes gives the same answer.
 *
 * out: written only when the return is > 0; may be NULL to validate only.
 *   !local: src/dst are AF_INET or AF_INET6 (the same family) with address
 *   and port in network order; local: src/dst are zeroed (AF_UNSPEC).
 *
 * v1: "PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n" with single spaces,
 *   dotted-quad IPv4 (octets 0..255, no leading zeros) for TCP4, RFC 4291
 *   IPv6 text (no zone) for TCP6, ports 0..65535 in decimal without sign or
 *   leading zeros ("0" itself is fine). "PROXY UNKNOWN" may be followed by a
 *   space and any printable ASCII before the CRLF, which is ignored
 *   (local). The whole line, CRLF included, fits in SG_PROXY_V1_MAX bytes.
 *
 * v2: the 12-byte signature, version 2, command LOCAL (0) or PROXY (1), a
 *   defined family/transport byte and a big-endian block length with
 *   16 + length <= SG_PROXY_V2_MAX. The block must hold the family's
 *   addresses (INET 12, INET6 36, UNIX 216, UNSPEC 0 bytes); the rest must be
 *   whole TLVs (type, 16-bit length, value), which are skipped unread.
 *   PROXY over INET/INET6 STREAM fills src/dst; PROXY over INET/INET6 DGRAM
 *   (UDP) is rejected; PROXY over UNSPEC or UNIX is reported as local. LOCAL
 *   accepts any defined family and is always local. CRC32C TLVs are not
 *   verified. */
ssize_t sg_proxy_protocol_parse(const char *data, size_t len, sg_proxy_header_t *out);

/* Returns 1 when data[0..len) cannot start a PROXY header at all (its first
 * byte is neither 'P' nor the v2 signature's CR), so the caller can drop a
 * client that speaks no PROXY protocol on its first byte; else 0 (len == 0
 * included). A 1 here implies sg_proxy_protocol_parse() returns -1. */
int sg_proxy_protocol_impossible(const char *data, size_t len);

#endif
