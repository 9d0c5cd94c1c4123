-- KEYS: one bucket's hash; ARGV: cost, capacity, refill, now. The key expires when the bucket
-- has drained (in the server's clock, which production callers share); an empty bucket is the
-- same as none, so it is deleted rather than written.
local cost, cap, refill, now = tonumber(ARGV[1]), tonumber(ARGV[2]),
                               tonumber(ARGV[3]), tonumber(ARGV[4])
local st = redis.call('HMGET', KEYS[1], 'l', 't')
local level, updated = tonumber(st[1]) or 0, tonumber(st[2]) or now
local elapsed = now - updated
if elapsed < 0 then elapsed = 0 end
level = level - elapsed * refill
if level < 0 then level = 0 end
local allowed, retry = 0, 0
if level + cost <= cap then
  allowed, level = 1, level + cost
elseif cost > cap then
  retry = math.huge
else
  retry = (level + cost - cap) / refill
end
local t = now
if updated > t then t = updated end
if level <= 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'l', string.format('%.17g', level),
             't', string.format('%.17g', t))
  local ms = math.ceil(((t - now) + level / refill) * 1000)
  if ms < 2 ^ 46 then
    redis.call('PEXPIRE', KEYS[1], string.format('%.0f', ms))
  else
    redis.call('PERSIST', KEYS[1])
  end
end
return {allowed, string.format('%.17g', retry)}
