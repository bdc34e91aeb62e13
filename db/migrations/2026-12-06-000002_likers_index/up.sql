-- ListLikers walks a post's liked pairs newest first, a page at a time
-- (keyset, not OFFSET): this index holds only liked pairs, in that order, so
-- any page is one index range scan. Built concurrently, so a migration on a
-- running database does not block the workers' writes.
CREATE INDEX CONCURRENTLY IF NOT EXISTS likes_likers
    ON likes (post_id, event_at_micros DESC, user_id DESC)
    WHERE liked;
