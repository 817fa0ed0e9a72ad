-- The API key that made a request (its declared name, never the secret)
-- and the key's team; NULL for requests made without a key.
ALTER TABLE requests ADD COLUMN api_key TEXT;
ALTER TABLE requests ADD COLUMN team TEXT;
