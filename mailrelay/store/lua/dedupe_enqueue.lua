-- KEYS: those of enqueue.lua, then P dedupe:<user>:<sha256 of the Message-ID>
-- ARGV: those of enqueue.lua, then the window in ms
-- [submission] dedupe_window: when the dedupe key names a message that still exists,
-- nothing is stored and the reply is 'DUP:<that id>' (the key is rewritten, TTL kept: a
-- write, so that a WAIT after this script also covers the earlier message). Otherwise it is
-- ENQUEUE_SCRIPT, and when that stored the message the key names it for the window. The
-- check and the enqueue are one script: two clients sending the same Message-ID at once
-- cannot both queue it, and a key never names a message that was not stored. While the
-- message it names is unsettled (its 250 or 451 not settled yet), nothing is stored and the
-- reply is 'PENDING:<that id>': the daemon that sent that message's 250 answers with its id
-- (a duplicate); otherwise the client gets 451 and retries: by then that message is confirmed
-- (a duplicate) or cancelled (and this one is queued). A message archived and released from
-- Redis leaves its key naming it as 'released:<id>': still a duplicate. The message's hash
-- names its dedupe key (field 'dedupe').
local dedupe_key = KEYS[#KEYS]
KEYS[#KEYS] = nil
local window = ARGV[#ARGV]
ARGV[#ARGV] = nil
local msg_prefix = ARGV[${enqueue.msg_prefix}]
local original = redis.call('GET', dedupe_key)
if original and string.sub(original, 1, 9) == 'released:' then
  -- archived and released from Redis (release_archived.lua): still a duplicate
  redis.call('SET', dedupe_key, original, 'KEEPTTL')
  return 'DUP:' .. string.sub(original, 10)
end
if original and redis.call('EXISTS', msg_prefix .. original) == 1 then
  if redis.call('HEXISTS', msg_prefix .. original, 'unsettled') == 1 then
    return 'PENDING:' .. original
  end
  redis.call('SET', dedupe_key, original, 'KEEPTTL')
  return 'DUP:' .. original
end
local function enqueue()
--#include enqueue

end
local result = enqueue()
if string.sub(result, 1, 3) == 'OK ' then
  redis.call('SET', dedupe_key, ARGV[${enqueue.id}], 'PX', tonumber(window))
  -- so that releasing the message's keys (release_archived.lua) keeps it a duplicate
  redis.call('HSET', msg_prefix .. ARGV[${enqueue.id}], 'dedupe', dedupe_key)
end
return result
