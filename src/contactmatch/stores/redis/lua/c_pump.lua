-- Cluster step, the global slot {P:g}. KEYS: G:pumped (group -> last group seq moved),
-- G:seq, G:feed; ARGV: number of groups, then per group: group, k, then its k outbox entries
-- '<group seq>|<at>|<uid>' in ascending group seq. Numbers every entry not moved yet into the
-- global feed, in group order; idempotent (an entry at or below the group's mark is skipped).
-- Returns each group's mark, for trimming its outbox.
local i, out = 2, {}
for _ = 1, tonumber(ARGV[1]) do
  local grp, k = ARGV[i], tonumber(ARGV[i + 1])
  local done = tonumber(redis.call('HGET', KEYS[1], grp) or '0')
  for j = i + 2, i + 1 + k do
    local gs, at, uid = string.match(ARGV[j], '^(%d+)|(%d+)|(.+)$')
    gs = tonumber(gs)
    if gs > done then
      local s = redis.call('INCR', KEYS[2])
      redis.call('RPUSH', KEYS[3], string.format('%d|%s|%s', s, at, uid))
      done = gs
    end
  end
  redis.call('HSET', KEYS[1], grp, string.format('%d', done))
  out[#out + 1] = string.format('%d', done)
  i = i + 2 + k
end
return out
