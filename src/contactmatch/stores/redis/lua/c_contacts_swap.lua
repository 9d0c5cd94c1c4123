-- Cluster step. KEYS: user hash, its contact set; ARGV: kid, hex... Swap the set; returns the
-- old members, or -1 if the user does not exist.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local olds = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
if #ARGV > 1 then
  for i = 2, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
  redis.call('HSET', KEYS[1], 'ckid', ARGV[1])
else
  redis.call('HDEL', KEYS[1], 'ckid')
end
return olds
