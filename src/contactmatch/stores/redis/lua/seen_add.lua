-- KEYS: a seen set; ARGV: now, fingerprint... Adds new members at ``now`` and raises older
-- scores to it; returns how many were new. Chunked: Lua's unpack has a bounded stack.
local now, n, new = ARGV[1], #ARGV, 0
local i = 2
while i <= n do
  local j = math.min(i + 999, n)
  local args = {}
  for k = i, j do
    args[#args + 1] = now
    args[#args + 1] = ARGV[k]
  end
  new = new + redis.call('ZADD', KEYS[1], 'NX', unpack(args))
  redis.call('ZADD', KEYS[1], 'GT', unpack(args))
  i = j + 1
end
return new
