-- What the console and `GET /v1/usage` read: the totals of the requests
-- that ended (every status but pending), by UTC day, pipeline, provider,
-- model, key and team (keys and teams '' when none). A trigger keeps them
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
    requests          BIGINT NOT NULL DEFAULT 0,
    errors            BIGINT NOT NULL DEFAULT 0,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_micros       BIGINT NOT NULL DEFAULT 0,
    usage_anomalies   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (day, pipeline, provider, model, api_key, team)
);

INSERT INTO usage_days
SELECT day, pipeline, provider, model, COALESCE(api_key, ''), COALESCE(team, ''),
       COUNT(*),
       COUNT(*) FILTER (WHERE status NOT IN ('ok', 'ceiling')),
       LEAST(SUM(GREATEST(prompt_tokens, 0)), 9223372036854775807)::BIGINT,
       LEAST(SUM(GREATEST(completion_tokens, 0)), 9223372036854775807)::BIGINT,
       LEAST(SUM(GREATEST(cost_micros, 0)), 9223372036854775807)::BIGINT,
       COUNT(usage_anomaly)
FROM requests
WHERE status <> 'pending'
GROUP BY day, pipeline, provider, model, COALESCE(api_key, ''), COALESCE(team, '');

-- An update takes the old row's share out (unless it was pending) and
-- puts the new one's in (unless it is pending).
CREATE FUNCTION usage_days_apply() RETURNS trigger AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status <> 'pending' THEN
        UPDATE usage_days SET
            requests = GREATEST(requests - 1, 0),
            errors = GREATEST(errors - (OLD.status NOT IN ('ok', 'ceiling'))::int, 0),
            prompt_tokens = GREATEST(prompt_tokens - GREATEST(OLD.prompt_tokens, 0), 0),
            completion_tokens = GREATEST(completion_tokens - GREATEST(OLD.completion_tokens, 0), 0),
            cost_micros = GREATEST(cost_micros - GREATEST(OLD.cost_micros, 0), 0),
            usage_anomalies = GREATEST(usage_anomalies - (OLD.usage_anomaly IS NOT NULL)::int, 0)
        WHERE day = OLD.day AND pipeline = OLD.pipeline AND provider = OLD.provider
          AND model = OLD.model AND api_key = COALESCE(OLD.api_key, '')
          AND team = COALESCE(OLD.team, '');
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status <> 'pending' THEN
        INSERT INTO usage_days VALUES (
            NEW.day, NEW.pipeline, NEW.provider, NEW.model,
            COALESCE(NEW.api_key, ''), COALESCE(NEW.team, ''), 1,
            (NEW.status NOT IN ('ok', 'ceiling'))::int,
            GREATEST(NEW.prompt_tokens, 0), GREATEST(NEW.completion_tokens, 0),
            GREATEST(NEW.cost_micros, 0), (NEW.usage_anomaly IS NOT NULL)::int)
        ON CONFLICT (day, pipeline, provider, model, api_key, team) DO UPDATE SET
            requests = usage_days.requests + LEAST(EXCLUDED.requests, 9223372036854775807 - usage_days.requests),
            errors = usage_days.errors + LEAST(EXCLUDED.errors, 9223372036854775807 - usage_days.errors),
            prompt_tokens = usage_days.prompt_tokens + LEAST(EXCLUDED.prompt_tokens, 9223372036854775807 - usage_days.prompt_tokens),
            completion_tokens = usage_days.completion_tokens + LEAST(EXCLUDED.completion_tokens, 9223372036854775807 - usage_days.completion_tokens),
            cost_micros = usage_days.cost_micros + LEAST(EXCLUDED.cost_micros, 9223372036854775807 - usage_days.cost_micros),
            usage_anomalies = usage_days.usage_anomalies + LEAST(EXCLUDED.usage_anomalies, 9223372036854775807 - usage_days.usage_anomalies);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER usage_days_insert AFTER INSERT OR DELETE ON requests
    FOR EACH ROW EXECUTE FUNCTION usage_days_apply();
CREATE TRIGGER usage_days_update AFTER UPDATE OF
    day, pipeline, provider, model, api_key, team, status, prompt_tokens,
    completion_tokens, cost_micros, usage_anomaly ON requests
    FOR EACH ROW WHEN (OLD.status <> 'pending' OR NEW.status <> 'pending')
    EXECUTE FUNCTION usage_days_apply();

-- The recent requests, newest first, filtered by one of these.
CREATE INDEX requests_pipeline_started ON requests (pipeline, started_at_ms);
CREATE INDEX requests_model_started ON requests (model, started_at_ms);
CREATE INDEX requests_status_started ON requests (status, started_at_ms);
