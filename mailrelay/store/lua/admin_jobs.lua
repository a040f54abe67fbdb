-- KEYS: leases, then queue:d:<domain> per recipient index; ARGV: id
-- Returns {Redis time in ms, then per recipient: due time or '', lease expiry or ''}.
local t = redis.call('TIME')
local out = {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
for k = 2, #KEYS do
  local job = ARGV[1] .. '.' .. (k - 2)
  out[#out + 1] = redis.call('ZSCORE', KEYS[k], job) or ''
  out[#out + 1] = redis.call('ZSCORE', KEYS[1], job) or ''
end
return out
