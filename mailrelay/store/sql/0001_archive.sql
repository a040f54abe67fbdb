-- 0001_archive: the archive's tables (issue 18), partitioned by day (UTC).
--
-- Applied once, inside one transaction, by mailrelay/store/migrations.py (which owns the
-- schema_version table). Every table is range-partitioned on its time column; one partition
-- per UTC day, named <table>_pYYYYMMDD, made by archive_create_partitions() ahead of time.
-- There is no DEFAULT partition: a row for a day with no partition is refused (check_violation,
-- SQLSTATE 23514) rather than piling up in a partition that slows every search.
-- A unique key on a partitioned table must include the partition column, so each natural key
-- is (key, time): messages, recipients and bodies all take their message's received
-- time, so a message and everything about it share one day's partitions and leave together.
-- Ids are COLLATE "C": searches page with the cursor (received ms, id) newest first, ties in
-- byte order as Redis's sorted sets give them, whatever the database's default collation
-- (mailrelay/store/archiveread.py). received_at holds whole milliseconds (Redis's clock).
-- Indexes are ascending: rows arrive in time order, so they fill index pages at the right end
-- (descending ones would split every page in half); newest-first searches scan them backward.

CREATE TABLE messages (
    id              text        COLLATE "C" NOT NULL,   -- mailrelay's message id (byte order)
    received_at     timestamptz NOT NULL,               -- the 250 (Redis's clock), partition key
    sender          text        NOT NULL DEFAULT '',    -- envelope MAIL FROM
    from_header     text        NOT NULL DEFAULT '',
    to_header       text        NOT NULL DEFAULT '',    -- as stored in Redis: JSON list text
    cc_header       text        NOT NULL DEFAULT '',    -- idem
    subject         text        NOT NULL DEFAULT '',
    message_id_header text      NOT NULL DEFAULT '',
    tag             text        NOT NULL DEFAULT '',
    metadata        jsonb       NOT NULL DEFAULT '{}',
    size            integer     NOT NULL DEFAULT 0 CHECK (size >= 0),
    username        text        NOT NULL DEFAULT '',    -- the authenticated submitter
    client          text        NOT NULL DEFAULT '',    -- the client's address
    status          text        NOT NULL,               -- queued, delivered, bounced, partial, ...
    rcpt_count      integer     NOT NULL DEFAULT 0,
    server          text,                               -- room for later: the API server
    stream          text,                               -- room for later: the message stream
    -- The timeline: the entries of the Redis list P timeline:<id> (JSON objects, oldest
    -- first) packed by mailrelay/store/timelinepack.py; timeline_length is their number, so a
    -- replayed older snapshot never overwrites a longer timeline. One value per message
    -- instead of a row per event: ~150 bytes for three events instead of ~700 with an index.
    timeline_length integer     NOT NULL DEFAULT 0,
    timeline        bytea,
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
CREATE INDEX messages_newest ON messages (received_at, id);
CREATE INDEX messages_by_tag ON messages (tag, received_at, id) WHERE tag <> '';
CREATE INDEX messages_by_status ON messages (status, received_at, id);

-- A recipient lives in its message's partition (received_at is the message's), so retention
-- drops a message and its recipients together. rcpt is its index in the message (the
-- delivery job is "<id>.<rcpt>").
CREATE TABLE recipients (
    message_id      text        COLLATE "C" NOT NULL,
    received_at     timestamptz NOT NULL,
    rcpt            smallint    NOT NULL,
    recipient       text        NOT NULL,
    state           text        NOT NULL,               -- queued, deferred, delivered, bounced, ...
    attempts        integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (message_id, received_at, rcpt)
) PARTITION BY RANGE (received_at);
CREATE INDEX recipients_by_address ON recipients (lower(recipient), received_at, message_id);

-- Bounce records (mailrelay.store.records.BounceRecord), by the time they were received.
CREATE TABLE bounces (
    id              text        COLLATE "C" NOT NULL,   -- the bounce's id (byte order)
    received_at     timestamptz NOT NULL,               -- partition key
    message_id      text        NOT NULL DEFAULT '',    -- '': the report matched no message
    recipient       text        NOT NULL DEFAULT '',
    type            text        NOT NULL,
    type_code       integer     NOT NULL DEFAULT 0,
    description     text        NOT NULL DEFAULT '',
    details         text        NOT NULL DEFAULT '',
    at              text        NOT NULL DEFAULT '',    -- RFC 3339 as stored
    inactive        boolean     NOT NULL DEFAULT false,
    fields          jsonb       NOT NULL DEFAULT '{}',  -- proof, status, remote_mta, source, rule, ...
    raw             bytea,                              -- the report as received
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
CREATE INDEX bounces_newest ON bounces (received_at, id);
CREATE INDEX bounces_by_message ON bounces (message_id) WHERE message_id <> '';
CREATE INDEX bounces_by_type ON bounces (type, received_at, id);
CREATE INDEX bounces_by_address ON bounces (lower(recipient), received_at, id);

-- Bodies apart from messages: dropped after content_retention, and big rows would bloat the
-- message heap that every search reads. body is the stored form (mailrelay.store.queue's
-- compress_body: zlib).
CREATE TABLE bodies (
    message_id      text        COLLATE "C" NOT NULL,
    received_at     timestamptz NOT NULL,               -- the message's, partition key
    body            bytea       NOT NULL,
    PRIMARY KEY (message_id, received_at)
) PARTITION BY RANGE (received_at);

-- Create the partitions of `days` UTC days from `first_day` for every archive table; returns
-- how many it created (0 when they all exist). CREATE TABLE .. (LIKE ..) then ATTACH takes only
-- SHARE UPDATE EXCLUSIVE on the parent, so writers and readers are not stalled (CREATE TABLE ..
-- PARTITION OF would take ACCESS EXCLUSIVE). Callers hold the migrations' advisory lock.
CREATE FUNCTION archive_create_partitions(first_day date, days integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    parent  text;
    child   text;
    day     date;
    created integer := 0;
BEGIN
    FOREACH parent IN ARRAY ARRAY['messages', 'recipients', 'bounces', 'bodies'] LOOP
        FOR i IN 0 .. days - 1 LOOP
            day := first_day + i;
            child := parent || '_p' || to_char(day, 'YYYYMMDD');
            CONTINUE WHEN to_regclass(child) IS NOT NULL;
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           child, parent);
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           parent, child, day::timestamp AT TIME ZONE 'UTC',
                           (day + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END LOOP;
    END LOOP;
    RETURN created;
END
$$;
