-- Change feed (single Redis): number the entries from G:seq and append them to the list
-- G:feed as '<seq>|<at>|<uid>', in the same script as the change they record. A list, not a
-- stream: trimming a list removes the bytes, while a trimmed stream entry may stay in its node
-- (flagged deleted, and saved in RDB files) until the whole node goes.
local function log(uids, at)
  if #uids == 0 then return end
  local last = redis.call('INCRBY', G .. ':seq', #uids)
  local first = last - #uids
  local items = {}
  for i, uid in ipairs(uids) do
    items[i] = string.format('%d|%s|%s', first + i, at, uid)
  end
  for i = 1, #items, 1000 do  -- unpack has a bounded stack
    redis.call('RPUSH', G .. ':feed', unpack(items, i, math.min(i + 999, #items)))
  end
end
