"""The Redis store's key layout and the Lua scripts that keep it consistent.

Keys (prefix ``editx:`` by default; one Redis database may hold several prefixes):

    <p><ns>:v:<key>   the value: JSON text, no TTL
    <p><ns>:sizes     hash key -> bytes of its value (every namespace: count, keys, bytes)
    <p><ns>:bytes     total bytes of the namespace's values
    <p><ns>:lru       sorted set key -> last use (bounded namespaces only; kept ones are never in it)
    <p>tick           the use counter that orders the sorted sets (one server-side clock for all)
    <p>counters       hash of the shared counters (HINCRBY / HINCRBYFLOAT)

Writes and evictions run as Lua scripts, so each is atomic: concurrent replicas neither evict too
much nor leave values without their size or recency records. ``update`` is a compare-and-set on the
SHA-1 of the value it read (retried when another writer got there first).
"""

_DROP = """
local function drop(p, n, member)
  local s = tonumber(redis.call('HGET', p .. n .. ':sizes', member) or '0')
  redis.call('DEL', p .. n .. ':v:' .. member)
  redis.call('HDEL', p .. n .. ':sizes', member)
  redis.call('DECRBY', p .. n .. ':bytes', s)
  redis.call('ZREM', p .. n .. ':lru', member)
  return s
end
"""

# ARGV: prefix, ns, key, value, mode (set | add | cas), expected sha1, max_entries (0: kept), max_bytes,
# then the bounded namespaces (the byte budget is theirs together).
PUT = (
    _DROP
    + """
local p, ns, key, data, mode, expected = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local max_entries, max_bytes = tonumber(ARGV[7]), tonumber(ARGV[8])
local vkey = p .. ns .. ':v:' .. key
if mode ~= 'set' then
  local current = redis.call('GET', vkey)
  if mode == 'add' and current then return 0 end
  if mode == 'cas' and ((not current) or redis.sha1hex(current) ~= expected) then return -1 end
end
local old = tonumber(redis.call('HGET', p .. ns .. ':sizes', key) or '0')
redis.call('SET', vkey, data)
redis.call('HSET', p .. ns .. ':sizes', key, #data)
redis.call('INCRBY', p .. ns .. ':bytes', #data - old)
if max_entries == 0 then return 1 end
local lru = p .. ns .. ':lru'
redis.call('ZADD', lru, redis.call('INCR', p .. 'tick'), key)
local extra = redis.call('ZCARD', lru) - max_entries
if extra > 0 then
  for _, member in ipairs(redis.call('ZRANGE', lru, 0, extra - 1)) do drop(p, ns, member) end
end
local total = 0
for i = 9, #ARGV do total = total + tonumber(redis.call('GET', p .. ARGV[i] .. ':bytes') or '0') end
while total > max_bytes do
  local best_n, best_m, best_s = nil, nil, nil
  for i = 9, #ARGV do
    local head = redis.call('ZRANGE', p .. ARGV[i] .. ':lru', 0, 0, 'WITHSCORES')
    if head[1] and not (ARGV[i] == ns and head[1] == key) then
      local score = tonumber(head[2])
      if best_s == nil or score < best_s then best_n, best_m, best_s = ARGV[i], head[1], score end
    end
  end
  if best_n == nil then break end
  total = total - drop(p, best_n, best_m)
end
return 1
"""
)

# KEYS: value, lru, tick; ARGV: key. A read that refreshes recency.
GET_TOUCH = """
local v = redis.call('GET', KEYS[1])
if v then redis.call('ZADD', KEYS[2], 'XX', redis.call('INCR', KEYS[3]), ARGV[1]) end
return v
"""

# ARGV: prefix, ns, key, expected sha1 ('' = whatever the value). 1 if something was removed.
DELETE = (
    _DROP
    + """
local p, ns, key, expected = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local vkey = p .. ns .. ':v:' .. key
if expected ~= '' then
  local current = redis.call('GET', vkey)
  if (not current) or redis.sha1hex(current) ~= expected then return 0 end
end
local existed = redis.call('EXISTS', vkey) + redis.call('HEXISTS', p .. ns .. ':sizes', key)
drop(p, ns, key)
if existed > 0 then return 1 end
return 0
"""
)

# ARGV: prefix, ns, batch. Returns {removed, bytes, left}.
CLEAR = (
    _DROP
    + """
local p, ns, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local sizes = p .. ns .. ':sizes'
local cursor, removed, bytes = '0', 0, 0
repeat
  local r = redis.call('HSCAN', sizes, cursor, 'COUNT', 100)
  cursor = r[1]
  for i = 1, #r[2], 2 do
    bytes = bytes + drop(p, ns, r[2][i])
    removed = removed + 1
  end
until cursor == '0' or removed >= n
local left = redis.call('HLEN', sizes)
if left == 0 then redis.call('DEL', p .. ns .. ':lru', p .. ns .. ':bytes') end
return {removed, bytes, left}
"""
)
