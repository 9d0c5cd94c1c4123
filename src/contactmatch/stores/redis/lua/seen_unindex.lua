-- KEYS: the seen-set index; ARGV: cutoff, subject... Unlists subjects with no add since cutoff
-- (a subject that added meanwhile keeps its entry).
local gone = 0
for i = 2, #ARGV do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) <= tonumber(ARGV[1]) then
    gone = gone + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return gone
