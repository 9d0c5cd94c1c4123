-- KEYS: seq, floor, feed (one hash tag); ARGV: after, count. Head, floor and the entries
-- numbered above after, from one moment (a script runs alone).
local head = redis.call('GET', KEYS[1]) or '0'
local floor = redis.call('GET', KEYS[2]) or '0'
local i = feed_find(KEYS[3], tonumber(ARGV[1]))
return {head, floor, redis.call('LRANGE', KEYS[3], i, i + tonumber(ARGV[2]) - 1)}
