-- KEYS: bounces (the bounce index: ids by time)
-- ARGV: (positions from mailrelay.store.scripts.ARCHIVE_SNAPSHOT_ARGV) the key prefixes of
--       msg, timeline, body, bounce and raw bounce keys, the number of message ids, then the
--       message ids, then the bounce ids
-- What the archiver writes for one batch of stream entries, read at one moment: per message
-- id, {its msg hash (flat; empty when gone), its whole timeline (oldest first), its stored
-- body or false}; the body only while the message was never archived (no 'archived' field:
-- archive_mark.lua sets it once the archive committed the message). Per bounce id, {its
-- bounce hash (flat; empty when gone), its time in the index (or false), its raw report (or
-- false)}. Returns {messages, bounces}, each in the order given.
local msg_prefix = ARGV[${archive_snapshot.msg_prefix}]
local timeline_prefix = ARGV[${archive_snapshot.timeline_prefix}]
local body_prefix = ARGV[${archive_snapshot.body_prefix}]
local bounce_prefix = ARGV[${archive_snapshot.bounce_prefix}]
local raw_prefix = ARGV[${archive_snapshot.bounce_raw_prefix}]
local first = ${archive_snapshot.#} + 2
local last_message = first + tonumber(ARGV[${archive_snapshot.#} + 1]) - 1
local messages, bounces = {}, {}
for k = first, last_message do
  local id = ARGV[k]
  local hash = redis.call('HGETALL', msg_prefix .. id)
  local timeline, body = {}, false
  if #hash > 0 then
    timeline = redis.call('LRANGE', timeline_prefix .. id, 0, -1)
    if redis.call('HEXISTS', msg_prefix .. id, 'archived') == 0 then
      body = redis.call('GET', body_prefix .. id)
    end
  end
  messages[#messages + 1] = {hash, timeline, body}
end
for k = last_message + 1, #ARGV do
  local id = ARGV[k]
  local hash = redis.call('HGETALL', bounce_prefix .. id)
  local at, raw = false, false
  if #hash > 0 then
    at = redis.call('ZSCORE', KEYS[1], id)
    raw = redis.call('GET', raw_prefix .. id)
  end
  bounces[#bounces + 1] = {hash, at, raw}
end
return {messages, bounces}
