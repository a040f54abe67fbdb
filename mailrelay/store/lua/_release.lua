-- KEYS: none of its own (a shared piece: scripts --#include it)
-- ARGV: none of its own; defines archive_in_postgres(version_key, min_version),
--       wholly_archived(mkey, tkey) and schedule_release(release_key, member, due_ms)
-- Shared Lua: when a message's Redis keys may go (issue 18). A message whose recipients are
-- all final (status not queued, settled) and whose whole timeline is archived (its hash's
-- `archived` equals the timeline's length) is kept in Redis only for a grace period: its member
-- ("m:<id>", or "b:<id>" for an archived bounce) waits in P archive:release with the time it may
-- go. Keys go only once the data is at the version that moved the archive to PostgreSQL
-- (min_version): release_archived.lua leaves every member waiting before that.
local function archive_in_postgres(version_key, min_version)
  return tonumber(redis.call('GET', version_key) or '0') >= min_version
end
local function wholly_archived(mkey, tkey)
  local row = redis.call('HMGET', mkey, 'status', 'archived', 'unsettled')
  if not row[1] or row[1] == 'queued' or row[3] then return false end
  return tonumber(row[2] or '-1') == redis.call('LLEN', tkey)
end
local function schedule_release(release_key, member, due_ms)
  redis.call('ZADD', release_key, 'NX', due_ms, member)
end
