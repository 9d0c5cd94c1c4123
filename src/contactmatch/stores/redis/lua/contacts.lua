-- ARGV: P, owner, kid, hex...
local uid = ARGV[2]
local uk = ukey(uid)
if redis.call('EXISTS', uk) == 0 then return 0 end
drop_contacts(uk, uid)
if #ARGV > 3 then
  for i = 4, #ARGV do
    redis.call('SADD', uk .. ':c', ARGV[i])
    redis.call('SADD', okey(ARGV[i]), uid)
  end
  redis.call('HSET', uk, 'ckid', ARGV[3])
end
return 1
