-- ARGV: P, at, n, then per user: uid, hex, tok, kid, ct, wk, disc, cat, uat
local at, n = ARGV[2], tonumber(ARGV[3])
for i = 0, n - 1 do
  local o = 3 + i * 9
  local owner = redis.call('GET', tkey(ARGV[o + 2]))
  if owner and owner ~= ARGV[o + 1] then
    return redis.error_reply('CONFLICT a token in the batch belongs to another user')
  end
end
local uids = {}
for i = 0, n - 1 do
  local o = 3 + i * 9
  local uid, hex, tok, cat = ARGV[o + 1], ARGV[o + 2], ARGV[o + 3], ARGV[o + 8]
  local uk = ukey(uid)
  local old = redis.call('HMGET', uk, 'tok', 'cat', 'hex', 'kid')
  if old[1] then
    cat = old[2]
    if old[1] ~= tok then redis.call('DEL', tkey(old[3])) end
    count(old[4], redis.call('GET', uk .. ':k'), -1)
  else
    redis.call('ZADD', G .. ':ids', 0, uid)
  end
  redis.call('HSET', uk, 'tok', tok, 'hex', hex, 'kid', ARGV[o + 4], 'ct', ARGV[o + 5],
             'disc', ARGV[o + 7], 'cat', cat, 'uat', ARGV[o + 9])
  redis.call('SET', uk .. ':k', ARGV[o + 6])
  redis.call('SET', tkey(hex), uid)
  count(ARGV[o + 4], ARGV[o + 6], 1)
  uids[#uids + 1] = uid
end
flush_census(G .. ':census')
log(uids, at)
return n
