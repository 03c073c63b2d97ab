-- The audit trail of security events, queryable with `python -m tessera_auth audit`.
CREATE TABLE audit_events (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL,
    kind       text NOT NULL,
    outcome    text NOT NULL,
    user_id    uuid,
    username   text,
    ip         text,
    request_id text,
    details    jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_events_at ON audit_events (at DESC);
CREATE INDEX audit_events_user ON audit_events (user_id, at DESC);
CREATE INDEX audit_events_kind ON audit_events (kind, at DESC);
