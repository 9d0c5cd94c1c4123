-- Cluster step. KEYS: G:ids; ARGV: op ('add'|'del'), uid, op, uid, ... The id index, one slot.
for i = 1, #ARGV, 2 do
  if ARGV[i] == 'add' then redis.call('ZADD', KEYS[1], 0, ARGV[i + 1]) end
  if ARGV[i] == 'del' then redis.call('ZREM', KEYS[1], ARGV[i + 1]) end
end
return 1
