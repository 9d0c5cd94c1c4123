-- Key census: a hash '<kind>:<key id>' -> users (kind 0: OPRF key id, 1: data-key id of the
-- wrapped key). Changes are summed in a table and applied once per script; a field that
-- reaches 0 is removed.
local census = {}
-- The data-key id in a wrapped key's header, as stores.base.wrapped_key_id reads it.
local function wkid(wk)
  if #wk < 2 or string.byte(wk, 1) ~= 2 then return '' end
  local n = string.byte(wk, 2)
  if n < 1 or n > 32 or #wk < 2 + n then return '' end
  local k = string.sub(wk, 3, 2 + n)
  if not string.match(k, '^[A-Za-z0-9._%-]+$') then return '' end
  return k
end
local function count(kid, wk, d)
  local a, b = '0:' .. kid, '1:' .. wkid(wk or '')
  census[a] = (census[a] or 0) + d
  census[b] = (census[b] or 0) + d
end
local function flush_census(key)
  for f, d in pairs(census) do
    if d ~= 0 and redis.call('HINCRBY', key, f, d) == 0 then redis.call('HDEL', key, f) end
  end
  census = {}
end
