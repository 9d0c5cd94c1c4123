-- ARGV: P, now, at, n, then per user: uid, disc
local n = tonumber(ARGV[4])
for i = 0, n - 1 do
  local uid = ARGV[5 + 2 * i]
  if redis.call('EXISTS', ukey(uid)) == 0 then
    return redis.error_reply('UNKNOWN ' .. uid)
  end
end
local uids = {}
for i = 0, n - 1 do
  local uid = ARGV[5 + 2 * i]
  redis.call('HSET', ukey(uid), 'disc', ARGV[6 + 2 * i], 'uat', ARGV[2])
  uids[#uids + 1] = uid
end
log(uids, ARGV[3])
return n
