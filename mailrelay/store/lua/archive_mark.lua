-- KEYS: events, meta:version, archive:release, meta:migrating
-- ARGV: consumer group, msg key prefix, timeline key prefix, release_after (ms), the data
--       version from which keys are released, the number of messages n, then n pairs of
--       message id and archived timeline length, the number of bounces b, then b bounce ids,
--       then the stream entry ids to acknowledge
-- Once the archive committed a batch: each message's hash records how much of its timeline is
-- archived ('archived': only ever raised, and only in a hash that still exists, so an expired
-- or deleted message is not brought back as a stray hash); a message now final and wholly
-- archived, and each archived bounce, is scheduled in archive:release to lose its Redis keys
-- after release_after (see _release.lua and release_archived.lua), at the data version that
-- moved the archive to PostgreSQL, or while `mailrelay migrate` runs (meta:migrating: the step
-- to that version marks what it copied with this script, and what the archiver finishes
-- meanwhile must not be missed; the release waits for the version); and the batch's entries
-- are acknowledged in the group (first: see below; `mailrelay migrate` gives none). Returns
-- the number of entries acknowledged.
--#include _release
local msg_prefix, timeline_prefix = ARGV[2], ARGV[3]
local release_after, min_version = tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + release_after
local last_pair = 6 + 2 * tonumber(ARGV[6])  -- the last pair's last value
local last_bounce = last_pair + 1 + tonumber(ARGV[last_pair + 1])
-- The acknowledgements first: on a full Redis (maxmemory, noeviction) a script's first write
-- that needs memory (HSET, ZADD) is refused, but XACK needs none and, once it has written, the
-- rest goes through; so the archiver still makes progress on a full Redis, and its trims and
-- releases free the memory (otherwise Redis would stay full after a long PostgreSQL outage).
local acked = 0
local k = last_bounce + 1
while k <= #ARGV do  -- in slices: unpack() of thousands of values overflows Lua's C stack
  local ids = {}
  for j = k, math.min(k + 999, #ARGV) do ids[#ids + 1] = ARGV[j] end
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
  k = k + 1000
end
local scheduling = archive_in_postgres(KEYS[2], min_version) or redis.call('EXISTS', KEYS[4]) == 1
for k = 7, last_pair, 2 do
  local id = ARGV[k]
  local mkey = msg_prefix .. id
  if redis.call('EXISTS', mkey) == 1 then
    local length = tonumber(ARGV[k + 1])
    local archived = tonumber(redis.call('HGET', mkey, 'archived') or '-1')
    if length > archived then
      redis.call('HSET', mkey, 'archived', length)
    end
    if scheduling and wholly_archived(mkey, timeline_prefix .. id) then
      schedule_release(KEYS[3], 'm:' .. id, due)
    end
  end
end
if scheduling then
  for k = last_pair + 2, last_bounce do
    schedule_release(KEYS[3], 'b:' .. ARGV[k], due)
  end
end
return acked
