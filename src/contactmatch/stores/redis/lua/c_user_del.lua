-- Cluster step, one slot group: the last step of an erasure. KEYS: user hash, wrapped-key key,
-- upload set, the group's outbox, counter and census; ARGV: uid, at. Deletes the three keys,
-- moves the census and adds the outbox entry, atomically; 0 if the user was already gone.
local old = redis.call('HMGET', KEYS[1], 'tok', 'kid')
if not old[1] then
  redis.call('DEL', KEYS[2], KEYS[3])
  return 0
end
count(old[2], redis.call('GET', KEYS[2]), -1)
flush_census(KEYS[6])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
local g = redis.call('INCR', KEYS[5])
redis.call('ZADD', KEYS[4], g, string.format('%d|%s|%s', g, ARGV[2], ARGV[1]))
return 1
