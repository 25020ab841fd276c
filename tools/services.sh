#!/usr/bin/env bash
# Start the local PostgreSQL (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379) used by the
# integration tests, if they are installed and down. Never fails the build: tests that need a
# service skip with a message when it is not reachable.
pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }

if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1; then
  version=$(ls /etc/postgresql 2>/dev/null | head -1)
  [ -n "$version" ] && pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
fi
if ! redis_up && command -v redis-server >/dev/null 2>&1; then
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
for i in $(seq 1 20); do pg_up && redis_up && break; sleep 0.5; done
echo "services: postgres $(pg_up && echo up || echo down), redis $(redis_up && echo up || echo down)"
