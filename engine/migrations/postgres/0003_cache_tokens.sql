-- Of a request's prompt tokens, those the provider read from its prompt
-- cache and those it wrote to it (priced at cached_input and cache_write).
ALTER TABLE requests ADD COLUMN cache_read_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN cache_write_tokens BIGINT NOT NULL DEFAULT 0;
