-- The forum: the resource service's own data.
CREATE TABLE comments (
    id         bigserial PRIMARY KEY,
    user_id    text NOT NULL,
    username   text,
    body       text NOT NULL CHECK (char_length(body) BETWEEN 1 AND 2000),
    served_by  text NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE INDEX comments_created_at ON comments (created_at DESC);
