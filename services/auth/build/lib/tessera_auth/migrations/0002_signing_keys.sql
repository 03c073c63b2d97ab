-- JWT signing keys, shared by every auth replica. Private keys are stored as
-- PKCS#8 PEM encrypted with the key-encryption key from the settings.
-- Life cycle: published (in JWKS, not yet signing) -> active (signing) -> retired.
CREATE TABLE signing_keys (
    kid          text PRIMARY KEY,
    algorithm    text NOT NULL,
    private_key  bytea NOT NULL,
    public_jwk   jsonb NOT NULL,
    state        text NOT NULL CHECK (state IN ('published', 'active', 'retired')),
    created_at   timestamptz NOT NULL,
    activated_at timestamptz,
    retired_at   timestamptz
);

CREATE UNIQUE INDEX signing_keys_one_active_per_algorithm
    ON signing_keys (algorithm) WHERE state = 'active';
