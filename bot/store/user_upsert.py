"""How a message's writer is upserted, by the turn's one statement and by the path of
several: a new platform user gets a row; a known one keeps theirs, their display name
(and updated_at) changing only when a new one is given."""

UPSERT_WRITER_ON_CONFLICT = """
    ON CONFLICT (channel_type, channel_user_id) DO UPDATE
        SET username = COALESCE(EXCLUDED.username, users.username),
            updated_at = CASE WHEN EXCLUDED.username IS DISTINCT FROM users.username
                              AND EXCLUDED.username IS NOT NULL
                              THEN now() ELSE users.updated_at END
    RETURNING id, preferred_model
"""
