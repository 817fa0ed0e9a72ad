-- One row per request. Inserted as 'pending' before the provider is called,
-- settled when the request ends; rows still pending after their instance
-- died are marked 'interrupted' at the next start.
CREATE TABLE requests (
    id                TEXT PRIMARY KEY,
    instance          TEXT NOT NULL,
    started_at_ms     BIGINT NOT NULL,
    ended_at_ms       BIGINT,
    day               TEXT NOT NULL,
    pipeline          TEXT NOT NULL,
    provider          TEXT NOT NULL,
    model             TEXT NOT NULL,
    status            TEXT NOT NULL,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    estimated         BIGINT NOT NULL DEFAULT 0,
    reserved_micros   BIGINT NOT NULL DEFAULT 0,
    cost_micros       BIGINT NOT NULL DEFAULT 0,
    ttft_ms           BIGINT,
    duration_ms       BIGINT,
    tool_calls        BIGINT NOT NULL DEFAULT 0,
    error_code        TEXT,
    budget_scopes     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX requests_started ON requests (started_at_ms);
CREATE INDEX requests_pending ON requests (status) WHERE status = 'pending';

-- Spend per budget scope ('global' or 'pipeline:NAME') and UTC day.
CREATE TABLE budget_days (
    scope           TEXT NOT NULL,
    day             TEXT NOT NULL,
    spent_micros    BIGINT NOT NULL DEFAULT 0,
    reserved_micros BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, day)
);

-- Alert thresholds that fired, so a restart does not fire them again.
CREATE TABLE alerts_fired (
    scope         TEXT NOT NULL,
    day           TEXT NOT NULL,
    threshold_ppm BIGINT NOT NULL,
    fired_at_ms   BIGINT NOT NULL,
    delivered     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, day, threshold_ppm)
);

-- Live instances: pending rows of an instance that is gone are orphans.
-- Gone means not seen for a while, or (on this host) its process is dead.
CREATE TABLE instances (
    id           TEXT PRIMARY KEY,
    last_seen_ms BIGINT NOT NULL,
    host         TEXT NOT NULL DEFAULT '',
    pid          BIGINT NOT NULL DEFAULT 0
);
