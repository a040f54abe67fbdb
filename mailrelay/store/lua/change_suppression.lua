-- KEYS: suppressed, suppressed:version; ARGV: "add"|"remove", address, entry JSON (add).
-- Returns 1 when the list changed (the counter is then incremented), else 0.
local changed
if ARGV[1] == 'add' then
  changed = redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3])
else
  changed = redis.call('HDEL', KEYS[1], ARGV[2])
end
if changed == 1 then redis.call('INCR', KEYS[2]) end
return changed
