-- 0001_archive: the archive's tables (issue 18), partitioned by day (UTC).
--
-- Applied once, inside one transaction, by mailrelay/store/migrations.py (which owns the
-- schema_version table). Every table is range-partitioned on its time column; one partition
-- per UTC day, named <table>_pYYYYMMDD, made by archive_create_partitions() ahead of time.
-- There is no DEFAULT partition: a row for a day with no partition is refused (check_violation,
-- SQLSTATE 23514) rather than piling up in a partition that slows every search.
-- A unique key on a partitioned table must include the partition column, so each natural key
-- is (key, time): a replayed event must carry its original time (the stream id gives it).

CREATE TABLE messages (
    id              text        NOT NULL,               -- mailrelay's message id
    received_at     timestamptz NOT NULL,               -- the 250, partition key
    sender          text        NOT NULL DEFAULT '',    -- envelope MAIL FROM
    from_header     text,
    to_header       text,
    cc_header       text,
    subject         text,
    tag             text,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    size            integer     NOT NULL DEFAULT 0 CHECK (size >= 0),
    username        text,                               -- the authenticated submitter
    client          text,                               -- the client's address
    server          text,                               -- room for later: the daemon that took it
    stream          text,                               -- room for later: the message stream
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
CREATE INDEX messages_newest ON messages (received_at DESC, id DESC);
CREATE INDEX messages_by_tag ON messages (tag, received_at DESC, id DESC) WHERE tag IS NOT NULL;

-- A recipient lives in its message's partition (received_at is the message's), so retention
-- drops a message and its recipients together.
CREATE TABLE recipients (
    message_id      text        NOT NULL,
    received_at     timestamptz NOT NULL,
    recipient       text        NOT NULL,
    status          text        NOT NULL,               -- queued, deferred, delivered, bounced, ...
    updated_at      timestamptz NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    last_response   text,
    PRIMARY KEY (message_id, recipient, received_at)
) PARTITION BY RANGE (received_at);
CREATE INDEX recipients_by_recipient ON recipients (recipient, received_at DESC, message_id DESC);
CREATE INDEX recipients_by_status ON recipients (status, received_at DESC, message_id DESC);

-- The timeline: one row per entry of the Redis stream `P events`; its id is the natural key.
CREATE TABLE events (
    stream_id       text        NOT NULL,               -- "<ms>-<seq>" of the stream entry
    at              timestamptz NOT NULL,               -- partition key
    message_id      text        NOT NULL,
    recipient       text,
    event           text        NOT NULL,
    detail          jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (stream_id, at)
) PARTITION BY RANGE (at);
CREATE INDEX events_by_message ON events (message_id, at);
CREATE INDEX events_newest ON events (at DESC);

CREATE TABLE bounces (
    stream_id       text        NOT NULL,               -- natural key, as for events
    at              timestamptz NOT NULL,               -- partition key
    message_id      text,                               -- NULL: the report matched no message
    recipient       text,
    kind            text        NOT NULL,               -- dsn, complaint, ...
    classification  text,
    diagnostic      text,
    raw             bytea,                              -- the report as received
    PRIMARY KEY (stream_id, at)
) PARTITION BY RANGE (at);
CREATE INDEX bounces_by_message ON bounces (message_id, at) WHERE message_id IS NOT NULL;
CREATE INDEX bounces_newest ON bounces (at DESC);

-- Bodies apart from messages: dropped after content_retention, and big rows would bloat the
-- message heap that every search reads.
CREATE TABLE bodies (
    message_id      text        NOT NULL,
    received_at     timestamptz NOT NULL,               -- the message's, partition key
    compression     text        NOT NULL DEFAULT 'zlib',
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
    FOREACH parent IN ARRAY ARRAY['messages', 'recipients', 'events', 'bounces', 'bodies'] LOOP
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
