-- KEYS: leases; ARGV: lease_until_ms, jobs... Extends the leases that still exist.
local n = 0
for k = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', tonumber(ARGV[1]), ARGV[k])
end
return n
