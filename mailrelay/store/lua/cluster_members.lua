-- KEYS: cluster; ARGV: member hash prefix
-- Returns {Redis time in ms, then per live member: owner, its hash as a flat list}.
local t = redis.call('TIME')
local out = {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
for _, owner in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local fields = redis.call('HGETALL', ARGV[1] .. owner)
  if #fields > 0 then
    out[#out + 1] = owner
    out[#out + 1] = fields
  end
end
return out
