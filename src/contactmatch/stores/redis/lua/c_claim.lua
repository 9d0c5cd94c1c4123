-- Cluster step. KEYS: token index key; ARGV: uid, stale owner ('' if none). Claim a token.
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and cur ~= ARGV[2] then
  return redis.error_reply('CONFLICT a token belongs to another user')
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
