-- The revocation plane's source of truth. A revocation is written here before
-- it is acknowledged; Redis holds a copy that the auth service rebuilds from
-- this table whenever Redis loses state (see tessera_auth.revocation_store).
--   kind 'jti':  value = token ID,     at = until = when the entry may go (exp + max leeway)
--   kind 'sid':  value = session link, at = until = when the entry may go
--   kind 'user': value = user ID,      at = "valid after" time, until = when it may go
CREATE TABLE revocations (
    kind        text NOT NULL CHECK (kind IN ('jti', 'sid', 'user')),
    value       text NOT NULL,
    at          double precision NOT NULL,
    until       double precision NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, value)
);

CREATE INDEX revocations_until ON revocations (until);
