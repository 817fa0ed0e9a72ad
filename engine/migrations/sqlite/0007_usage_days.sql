-- What the console and `GET /v1/usage` read: the totals of the requests
-- that ended (every status but pending), by UTC day, pipeline, provider,
-- model, key and team (keys and teams '' when none). Triggers keep them
-- in the same transaction as every change to `requests`, so that they
-- always equal a sum over its rows (as `sluice usage` computes it: amounts
-- below zero count as zero; an error is a status other than ok, ceiling
-- or pending; sums stop at the largest BIGINT instead of overflowing, as
-- its do, so that absurd usage a provider reports never fails a
-- settlement). A request costs one upsert here, when it ends: the pending
-- rows (requests in flight, a few) are read from `requests` itself
-- through its `requests_pending` index. A month of a million-row ledger
-- is then a few thousand rows.
CREATE TABLE usage_days (
    day               TEXT NOT NULL,
    pipeline          TEXT NOT NULL,
    provider          TEXT NOT NULL,
    model             TEXT NOT NULL,
    api_key           TEXT NOT NULL,
    team              TEXT NOT NULL,
    requests          INTEGER NOT NULL DEFAULT 0,
    errors            INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_micros       INTEGER NOT NULL DEFAULT 0,
    usage_anomalies   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, pipeline, provider, model, api_key, team)
);

-- Rows one by one, as the triggers add them (sums that stop at the
-- largest integer cannot be taken with SUM, which fails on overflow).
INSERT INTO usage_days
SELECT day, pipeline, provider, model, COALESCE(api_key, ''), COALESCE(team, ''), 1,
       status NOT IN ('ok', 'ceiling'),
       max(prompt_tokens, 0), max(completion_tokens, 0),
       max(cost_micros, 0), usage_anomaly IS NOT NULL
FROM requests
WHERE status <> 'pending'
    ON CONFLICT (day, pipeline, provider, model, api_key, team) DO UPDATE SET
        requests = requests + min(excluded.requests, 9223372036854775807 - requests),
        errors = errors + min(excluded.errors, 9223372036854775807 - errors),
        prompt_tokens = prompt_tokens + min(excluded.prompt_tokens, 9223372036854775807 - prompt_tokens),
        completion_tokens = completion_tokens + min(excluded.completion_tokens, 9223372036854775807 - completion_tokens),
        cost_micros = cost_micros + min(excluded.cost_micros, 9223372036854775807 - cost_micros),
        usage_anomalies = usage_anomalies + min(excluded.usage_anomalies, 9223372036854775807 - usage_anomalies);

CREATE TRIGGER usage_days_insert AFTER INSERT ON requests
WHEN NEW.status <> 'pending' BEGIN
    INSERT INTO usage_days VALUES (
        NEW.day, NEW.pipeline, NEW.provider, NEW.model,
        COALESCE(NEW.api_key, ''), COALESCE(NEW.team, ''), 1,
        NEW.status NOT IN ('ok', 'ceiling'),
        max(NEW.prompt_tokens, 0), max(NEW.completion_tokens, 0),
        max(NEW.cost_micros, 0), NEW.usage_anomaly IS NOT NULL)
    ON CONFLICT (day, pipeline, provider, model, api_key, team) DO UPDATE SET
        requests = requests + min(excluded.requests, 9223372036854775807 - requests),
        errors = errors + min(excluded.errors, 9223372036854775807 - errors),
        prompt_tokens = prompt_tokens + min(excluded.prompt_tokens, 9223372036854775807 - prompt_tokens),
        completion_tokens = completion_tokens + min(excluded.completion_tokens, 9223372036854775807 - completion_tokens),
        cost_micros = cost_micros + min(excluded.cost_micros, 9223372036854775807 - cost_micros),
        usage_anomalies = usage_anomalies + min(excluded.usage_anomalies, 9223372036854775807 - usage_anomalies);
END;

CREATE TRIGGER usage_days_delete AFTER DELETE ON requests
WHEN OLD.status <> 'pending' BEGIN
    UPDATE usage_days SET
        requests = max(requests - 1, 0),
        errors = max(errors - (OLD.status NOT IN ('ok', 'ceiling')), 0),
        prompt_tokens = max(prompt_tokens - max(OLD.prompt_tokens, 0), 0),
        completion_tokens = max(completion_tokens - max(OLD.completion_tokens, 0), 0),
        cost_micros = max(cost_micros - max(OLD.cost_micros, 0), 0),
        usage_anomalies = max(usage_anomalies - (OLD.usage_anomaly IS NOT NULL), 0)
    WHERE day = OLD.day AND pipeline = OLD.pipeline AND provider = OLD.provider
      AND model = OLD.model AND api_key = COALESCE(OLD.api_key, '')
      AND team = COALESCE(OLD.team, '');
END;

-- An update takes the old row's share out (unless it was pending) and
-- puts the new one's in (unless it is pending).
CREATE TRIGGER usage_days_update_old AFTER UPDATE OF
    day, pipeline, provider, model, api_key, team, status, prompt_tokens,
    completion_tokens, cost_micros, usage_anomaly ON requests
WHEN OLD.status <> 'pending' BEGIN
    UPDATE usage_days SET
        requests = max(requests - 1, 0),
        errors = max(errors - (OLD.status NOT IN ('ok', 'ceiling')), 0),
        prompt_tokens = max(prompt_tokens - max(OLD.prompt_tokens, 0), 0),
        completion_tokens = max(completion_tokens - max(OLD.completion_tokens, 0), 0),
        cost_micros = max(cost_micros - max(OLD.cost_micros, 0), 0),
        usage_anomalies = max(usage_anomalies - (OLD.usage_anomaly IS NOT NULL), 0)
    WHERE day = OLD.day AND pipeline = OLD.pipeline AND provider = OLD.provider
      AND model = OLD.model AND api_key = COALESCE(OLD.api_key, '')
      AND team = COALESCE(OLD.team, '');
END;

CREATE TRIGGER usage_days_update_new AFTER UPDATE OF
    day, pipeline, provider, model, api_key, team, status, prompt_tokens,
    completion_tokens, cost_micros, usage_anomaly ON requests
WHEN NEW.status <> 'pending' BEGIN
    INSERT INTO usage_days VALUES (
        NEW.day, NEW.pipeline, NEW.provider, NEW.model,
        COALESCE(NEW.api_key, ''), COALESCE(NEW.team, ''), 1,
        NEW.status NOT IN ('ok', 'ceiling'),
        max(NEW.prompt_tokens, 0), max(NEW.completion_tokens, 0),
        max(NEW.cost_micros, 0), NEW.usage_anomaly IS NOT NULL)
    ON CONFLICT (day, pipeline, provider, model, api_key, team) DO UPDATE SET
        requests = requests + min(excluded.requests, 9223372036854775807 - requests),
        errors = errors + min(excluded.errors, 9223372036854775807 - errors),
        prompt_tokens = prompt_tokens + min(excluded.prompt_tokens, 9223372036854775807 - prompt_tokens),
        completion_tokens = completion_tokens + min(excluded.completion_tokens, 9223372036854775807 - completion_tokens),
        cost_micros = cost_micros + min(excluded.cost_micros, 9223372036854775807 - cost_micros),
        usage_anomalies = usage_anomalies + min(excluded.usage_anomalies, 9223372036854775807 - usage_anomalies);
END;

-- The recent requests, newest first, filtered by one of these.
CREATE INDEX requests_pipeline_started ON requests (pipeline, started_at_ms);
CREATE INDEX requests_model_started ON requests (model, started_at_ms);
CREATE INDEX requests_status_started ON requests (status, started_at_ms);
