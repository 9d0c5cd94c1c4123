-- KEYS: a seen set; ARGV: cutoff. Drops entries added at or before it: {removed, left}.
local gone = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return {gone, redis.call('ZCARD', KEYS[1])}
