#!/bin/sh
# redis-server in the background, daprd in the foreground (its exit ends the container)
set -eu
/usr/bin/redis-server --bind 127.0.0.1 --port 6379 --dir /var/lib/redis --appendonly yes \
  --appendfsync always --save "" --daemonize yes --logfile /var/lib/redis/redis.log
exec /usr/local/bin/daprd --app-id harness --mode standalone \
  --resources-path /etc/dapr/components --dapr-http-port 3500 --dapr-grpc-port 50001 \
  --metrics-port 9090 --dapr-listen-addresses 0.0.0.0 --log-level warn
