local function drop_contacts(uk, uid)
  local olds = redis.call('SMEMBERS', uk .. ':c')
  for _, h in ipairs(olds) do redis.call('SREM', okey(h), uid) end
  redis.call('DEL', uk .. ':c')
  redis.call('HDEL', uk, 'ckid')
  return #olds
end
