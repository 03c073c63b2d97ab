-- Users: one row per account. The username is stored normalised (NFKC, case-folded).
CREATE TABLE users (
    id                  uuid PRIMARY KEY,
    username            text NOT NULL UNIQUE,
    password_hash       text NOT NULL,
    created_at          timestamptz NOT NULL,
    password_changed_at timestamptz NOT NULL,
    disabled            boolean NOT NULL DEFAULT false,
    CONSTRAINT users_username_length CHECK (char_length(username) BETWEEN 3 AND 64)
);
