-- Of a request's cache writes, those for an hour (a `ttl: "1h"`
-- breakpoint), priced at cache_write_1h; the rest at cache_write.
ALTER TABLE requests ADD COLUMN cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0;
