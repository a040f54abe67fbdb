-- KEYS: none of its own (a shared piece: scripts --#include it)
-- ARGV: none of its own; defines count(minute_prefix, hour_prefix, now_ms, name, by)
-- Shared Lua: per-minute (kept 2 hours) and per-hour (kept 2 days) counters for the stats API
-- and the status page charts. minute_prefix, hour_prefix: Keys.stats_minute_prefix
-- (P idx:stats:m:) and Keys.stats_hour_prefix (P idx:stats:h:), from the script's ARGV.
local function count(minute_prefix, hour_prefix, now_ms, name, by)
  local mkey = minute_prefix .. math.floor(now_ms / 60000)
  local hkey = hour_prefix .. math.floor(now_ms / 3600000)
  redis.call('HINCRBY', mkey, name, by)
  redis.call('EXPIRE', mkey, 7200)
  redis.call('HINCRBY', hkey, name, by)
  redis.call('EXPIRE', hkey, 172800)
end
