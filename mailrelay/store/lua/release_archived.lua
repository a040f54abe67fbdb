-- KEYS: archive:release, meta:version, idx:time, bounces, bounces:unmatched
-- ARGV: now (ms), the most members to look at, the data version from which keys go, then the
--       prefixes msg_prefix, timeline_prefix, body_prefix, rcpt_index_prefix,
--       tag_index_prefix, status_index_prefix, bounce_prefix, bounce_raw_prefix,
--       late_reports_prefix, retention (s)
-- Deletes the Redis keys of archived messages and bounces whose grace period is over
-- (members of archive:release due by now), once the data is at min_version (before that every
-- member waits, due or not: `mailrelay migrate` schedules what it copied before it records the
-- version that lets it go): a message's hash, timeline and body and its entries
-- in the search indexes, only if it is still final and wholly archived (a late event makes its timeline longer
-- than what is archived: it waits for the archiver to schedule it again; its dedupe key, if it
-- still names it, names it as 'released:<id>', see dedupe_enqueue.lua); a bounce's record and
-- raw report and its index entries. A released message's reports per recipient (its hash's
-- 'reports:<i>', the cap of record_bounce.lua) go on in late_reports_prefix .. '<id>.<i>' (expiring
-- after the retention), which counts the reports that come after. Returns {messages released,
-- bounces released, kept}.
--#include _release
--#include _unindex

local now, limit, min_version = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local msg_p, timeline_p, body_p = ARGV[4], ARGV[5], ARGV[6]
local rcpt_p, tag_p, status_p = ARGV[7], ARGV[8], ARGV[9]
local bounce_p, bounce_raw_p = ARGV[10], ARGV[11]
local late_reports_p, retention = ARGV[12], tonumber(ARGV[13])

-- the message's report counts, carried over to its late reports counters
local function keep_report_counts(mkey, id)
  local n = tonumber(redis.call('HGET', mkey, 'rcpt_count') or '0')
  for k = 0, n - 1 do
    local count = redis.call('HGET', mkey, 'reports:' .. k)
    if count then redis.call('SET', late_reports_p .. id .. '.' .. k, count, 'EX', retention) end
  end
end
if not archive_in_postgres(KEYS[2], min_version) then return {0, 0, 0} end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
local messages, bounces, kept = 0, 0, 0
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local kind, id = string.sub(member, 1, 2), string.sub(member, 3)
  if kind == 'm:' then
    local mkey, tkey = msg_p .. id, timeline_p .. id
    if wholly_archived(mkey, tkey) then
      unindex_message(mkey, id, KEYS[3], rcpt_p, tag_p, status_p)
      keep_report_counts(mkey, id)
      local dedupe = redis.call('HGET', mkey, 'dedupe')
      if dedupe and redis.call('GET', dedupe) == id then
        redis.call('SET', dedupe, 'released:' .. id, 'KEEPTTL')
      end
      redis.call('DEL', mkey, tkey, body_p .. id)
      messages = messages + 1
    else
      kept = kept + 1
    end
  elseif kind == 'b:' then
    redis.call('DEL', bounce_p .. id, bounce_raw_p .. id)
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZREM', KEYS[5], id)
    bounces = bounces + 1
  else
    kept = kept + 1
  end
end
return {messages, bounces, kept}
