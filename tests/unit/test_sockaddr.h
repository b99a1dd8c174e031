/* Test helper shared by the egress unit tests (include after cmocka.h). */
#ifndef SG_TEST_SOCKADDR_H
#define SG_TEST_SOCKADDR_H

#include <arpa/inet.h>
#include <string.h>
#include <sys/socket.h>

/* An IPv4 or IPv6 literal as a sockaddr (port 0); fails the test otherwise. */
static struct sockaddr_storage sa(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, ip, &s6->sin6_addr), 1);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, ip, &s4->sin_addr), 1);
    }
    return ss;
}

#endif
