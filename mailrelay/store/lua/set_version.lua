-- KEYS: meta:version; ARGV: expected version (0 also matches a missing key), new version
local v = redis.call('GET', KEYS[1]) or '0'
if tonumber(v) ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
