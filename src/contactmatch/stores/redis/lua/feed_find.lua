-- The index of the first feed entry numbered above x (binary search: seqs ascend along the
-- list; no assumption that they have no gaps). KEYS[feed] names the list.
local function feed_find(feed, x)
  local lo, hi = 0, redis.call('LLEN', feed)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local v = redis.call('LINDEX', feed, mid)
    if tonumber(string.match(v, '^(%d+)')) > x then hi = mid else lo = mid + 1 end
  end
  return lo
end
