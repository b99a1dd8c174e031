#!/bin/bash
# Container health check: exits 0 when GET /healthz on the admin listener
# (127.0.0.1:$SANDGATE_HEALTH_PORT) answers 200. The image has no curl;
# bash's /dev/tcp and builtins are enough.
port=${SANDGATE_HEALTH_PORT:-9901}
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3 || exit 1
IFS= read -r -t 3 status <&3 || exit 1
[[ $status == HTTP/1.[01]\ 200\ * ]]
