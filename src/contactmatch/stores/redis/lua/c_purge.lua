-- Cluster step. KEYS: user hash, its contact set; ARGV: keep kid. Drop uploads made under
-- another key id; returns the dropped members.
local kid = redis.call('HGET', KEYS[1], 'ckid')
if (not kid) or kid == ARGV[1] then return {} end
local olds = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[1], 'ckid')
return olds
