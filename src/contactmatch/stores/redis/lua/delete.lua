-- ARGV: P, uid, at
local uid = ARGV[2]
local uk = ukey(uid)
local old = redis.call('HMGET', uk, 'tok', 'hex', 'kid')
if not old[1] then return 0 end
count(old[3], redis.call('GET', uk .. ':k'), -1)
flush_census(G .. ':census')
redis.call('DEL', tkey(old[2]))
redis.call('ZREM', G .. ':ids', uid)
drop_contacts(uk, uid)
redis.call('DEL', uk, uk .. ':k')
log({uid}, ARGV[3])
return 1
