-- Cluster step, one slot group. KEYS: user hash, its wrapped-key key, the group's outbox,
-- counter and census; ARGV: uid, at, expected tok, expected disc ('' = absent), then the
-- fields to set as name, value pairs ('' values are skipped; 'wk' goes to the key).
-- Compare-and-set: 0 if the user changed meanwhile. Applied with the change, atomically: the
-- group's census and an outbox entry '<group seq>|<at>|<uid>' that the pump step numbers
-- into the global feed.
local old = redis.call('HMGET', KEYS[1], 'tok', 'disc', 'cat', 'kid')
if (old[1] or '') ~= ARGV[3] or (old[2] or '') ~= ARGV[4] then return 0 end
local oldwk = redis.call('GET', KEYS[2])
local kid, wk = old[4], oldwk
for i = 5, #ARGV, 2 do
  local f, v = ARGV[i], ARGV[i + 1]
  if f == 'cat' and old[3] then v = old[3] end
  if v ~= '' then
    if f == 'wk' then
      redis.call('SET', KEYS[2], v)
      wk = v
    else
      redis.call('HSET', KEYS[1], f, v)
      if f == 'kid' then kid = v end
    end
  end
end
if old[1] then count(old[4], oldwk, -1) end
count(kid, wk, 1)
flush_census(KEYS[5])
local g = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[3], g, string.format('%d|%s|%s', g, ARGV[2], ARGV[1]))
return 1
