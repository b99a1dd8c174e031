/* The egress listeners' sniffers: the name a sandbox's connection asks for,
 * read from the first bytes it sends (the TLS ClientHello's SNI on the TLS
 * listener, the request head's Host on the HTTP listener).
 *
 * Pure functions over caller bytes: no allocation, no I/O, no global state,
 * O(len) time. Stateless: the caller keeps every byte the client sent so far
 * in one buffer and calls again with the grown buffer after each read
 * (hellos and heads are small, so rescanning is cheaper than a state
 * machine that survives between reads).
 *
 * Results are prefix-consistent: for a fixed max, once INVALID or DONE is
 * returned, every longer buffer with the same first bytes gives the same
 * answer (DONE with the same name), so a caller may stop reading at the
 * first answer that is not MORE. Only the first max bytes are ever looked
 * at; a hello or head that ends within them is DONE even when len > max.
 *
 * INVALID covers both "not parsable" and "over the cap"; a caller that
 * must tell them apart (the spec's reason "sniff_failed") checks len >= max:
 * below the cap, INVALID was caused by the bytes themselves. */
#ifndef SG_EGRESS_SNIFF_H
#define SG_EGRESS_SNIFF_H

#include "core/slice.h"

#include <stddef.h>

typedef enum { SG_SNIFF_MORE = 0, SG_SNIFF_DONE = 1, SG_SNIFF_INVALID = -1 } sg_sniff_result_t;

/* Longest name either sniffer returns (an SNI host_name or a Host name). */
#define SG_SNIFF_NAME_MAX 255

/* TLS: buf[0..len) holds every byte the client sent so far; max caps how
 * many bytes the ClientHello may take on the wire, record headers included.
 *
 * Returns MORE while the ClientHello is not complete yet and can still end
 * within max. DONE once the whole ClientHello (its last byte at an offset
 * < max) is present and well formed: *name = the first server_name entry of
 * type host_name, pointing into buf, or {buf, 0} when the hello carries no
 * server_name extension. INVALID when the bytes are not TLS records of type
 * 22 (handshake, legacy version major 3, 1..16384+256 bytes each) starting
 * with a ClientHello, when the hello is malformed (every length field is
 * checked against its container, extensions must fill the hello exactly),
 * or when it cannot end within max. SSLv2-compatible hellos are INVALID.
 *
 * The hello may be fragmented over any number of records and each record
 * over any number of reads; the sniffer walks the records in place. Rules
 * beyond the wire grammar, each answered with INVALID:
 *   - two server_name extensions, or two host_name entries in one (RFC 8446
 *     4.2 and RFC 6066 3 forbid both; servers would disagree on which wins);
 *   - a host_name that is empty, over SG_SNIFF_NAME_MAX bytes, or holds a
 *     byte outside 0x21..0x7e (NUL, controls, space, DEL, non-ASCII);
 *   - a host_name split across two records: *name must point into buf and
 *     a record header sits in the middle of it. No client does this except
 *     to evade inspection; the caller's fallback (decide on the address)
 *     is the right answer for it.
 * *name is written only on DONE. */
sg_sniff_result_t sg_sniff_tls_sni(const char *buf, size_t len, size_t max, sg_slice_t *name);

/* HTTP/1.x: the same contract over a request head: the request line
 * `METHOD SP target SP HTTP/1.0|HTTP/1.1 CRLF`, header lines
 * `name ":" OWS value OWS CRLF`, then an empty line CRLF; max caps the head
 * including that empty line.
 *
 * DONE with *host = the Host header's host (value trimmed of SP/HTAB, the
 * ":port" removed, an IPv6 literal's brackets removed; pointing into buf).
 * When the head has no Host header and the target is absolute-form
 * `http://authority[/?#...]` (scheme case-insensitive), the authority's host
 * is used instead; otherwise *host = {buf, 0}. With a Host header present
 * the target never matters: the Host header decides.
 *
 * INVALID when the head is not HTTP/1.0 or HTTP/1.1 (e.g. TLS, HTTP/2's
 * preface), breaks the grammar below, has two Host headers, has a Host (or
 * absolute-form authority, when it is used) that is not a plausible host,
 * or does not end within max.
 *
 * Grammar, stricter than the ingress's llhttp so that whatever we accept
 * the destination parses the same way: method and header names are RFC 9110
 * tokens; the target is one or more visible ASCII bytes (0x21..0x7e);
 * header values are HTAB, SP, visible ASCII or obs-text (0x80..0xff); every
 * line ends in CRLF. Bare LF line ends, a CR not followed by LF, obs-fold
 * (a line starting with SP/HTAB), whitespace before a header's colon,
 * empty header names and blank lines before the request line are INVALID
 * (llhttp 8 in strict mode accepts bare LF at some line ends and obs-fold;
 * we do not, so the sniffed head has one reading only).
 *
 * A plausible host: `name [":" port]` where name is 1..SG_SNIFF_NAME_MAX
 * RFC 3986 reg-name bytes (ALPHA DIGIT - . _ ~ ! $ & ' ( ) * + , ; = %),
 * or `"[" IPv6 address "]" [":" port]` (inet_pton must accept it); port is
 * 1..5 digits <= 65535. So no spaces, controls, '/', '@', '?', '#', '\',
 * non-ASCII, and no bare IPv6. *host is written only on DONE. */
sg_sniff_result_t sg_sniff_http_host(const char *buf, size_t len, size_t max, sg_slice_t *host);

#endif
