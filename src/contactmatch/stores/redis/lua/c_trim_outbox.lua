-- Cluster step, one slot group. KEYS: the group's outbox; ARGV: the group's mark. Drops the
-- entries the pump has numbered (at or below the mark).
return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
