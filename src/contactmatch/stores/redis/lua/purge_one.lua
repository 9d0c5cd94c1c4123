-- ARGV: P, uid, keep kid: drop one owner's uploads if made under another key id
local uk = ukey(ARGV[2])
local kid = redis.call('HGET', uk, 'ckid')
if (not kid) or kid == ARGV[3] then return 0 end
return drop_contacts(uk, ARGV[2])
