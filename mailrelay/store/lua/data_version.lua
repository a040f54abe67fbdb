-- KEYS: meta:version, then keys that exist only when the database holds mailrelay data
-- ARGV: the version to set on an empty database
-- Returns {version, 1 if set just now else 0}; data without a version is version 0.
local v = redis.call('GET', KEYS[1])
if v then return {v, 0} end
for k = 2, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 1 then return {'0', 0} end
end
redis.call('SET', KEYS[1], ARGV[1])
return {ARGV[1], 1}
