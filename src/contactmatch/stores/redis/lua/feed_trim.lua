-- KEYS: floor, feed (one hash tag); ARGV: cut. Drops the entries numbered below cut and raises
-- the floor to the last one dropped; returns how many went.
local k = feed_find(KEYS[2], tonumber(ARGV[1]) - 1)
if k == 0 then return 0 end
local top = tonumber(string.match(redis.call('LINDEX', KEYS[2], k - 1), '^(%d+)'))
redis.call('LTRIM', KEYS[2], k, -1)
if top > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], string.format('%d', top))
end
return k
