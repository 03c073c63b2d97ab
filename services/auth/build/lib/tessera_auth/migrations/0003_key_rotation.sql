-- Key rotation: a key that stops signing stays published, verify-only, until
-- every token it signed has expired, so rotating never breaks a live token.
-- Life cycle: published (in JWKS, not signing) -> active (signing; one per
-- algorithm) -> inactive (in JWKS, no longer signing) -> retired (gone from JWKS).
ALTER TABLE signing_keys ADD COLUMN deactivated_at timestamptz;

ALTER TABLE signing_keys DROP CONSTRAINT signing_keys_state_check;
ALTER TABLE signing_keys ADD CONSTRAINT signing_keys_state_check
    CHECK (state IN ('published', 'active', 'inactive', 'retired'));
