-- Rate limits: one token bucket per scope and kind (`key:NAME/requests`,
-- `pipeline:NAME/tokens`, ...), shared by every instance on this ledger.
-- `fill` is in minute-milliseconds (an amount n is n * 60000); it drains
-- at the limit per millisecond since `updated_ms`.
CREATE TABLE rate_buckets (
    bucket TEXT PRIMARY KEY,
    fill BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
-- The token buckets a request reserved on, and how many tokens, so that
-- settling gives back what it did not use.
ALTER TABLE requests ADD COLUMN rate_buckets TEXT NOT NULL DEFAULT '';
ALTER TABLE requests ADD COLUMN rate_tokens BIGINT NOT NULL DEFAULT 0;
