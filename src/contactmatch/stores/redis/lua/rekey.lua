-- ARGV: P, now, at, n, then per update: uid, old, new, hex, kid, ct, wk ('' keeps the old ones)
local n = tonumber(ARGV[4])
for i = 0, n - 1 do
  local o = 4 + i * 7
  local owner = redis.call('GET', tkey(ARGV[o + 4]))
  if owner and owner ~= ARGV[o + 1] then
    return redis.error_reply('CONFLICT a new token belongs to another user')
  end
end
local done = {}
for i = 0, n - 1 do
  local o = 4 + i * 7
  local uid, tok, hex = ARGV[o + 1], ARGV[o + 3], ARGV[o + 4]
  local uk = ukey(uid)
  local old = redis.call('HMGET', uk, 'tok', 'hex', 'kid')
  if old[1] and old[1] == ARGV[o + 2] then
    local wk = redis.call('GET', uk .. ':k')
    count(old[3], wk, -1)
    redis.call('DEL', tkey(old[2]))
    redis.call('SET', tkey(hex), uid)
    redis.call('HSET', uk, 'tok', tok, 'hex', hex, 'kid', ARGV[o + 5], 'uat', ARGV[2])
    if ARGV[o + 6] ~= '' then redis.call('HSET', uk, 'ct', ARGV[o + 6]) end
    if ARGV[o + 7] ~= '' then
      redis.call('SET', uk .. ':k', ARGV[o + 7])
      wk = ARGV[o + 7]
    end
    count(ARGV[o + 5], wk, 1)
    done[#done + 1] = uid
  end
end
flush_census(G .. ':census')
log(done, ARGV[3])
return #done
