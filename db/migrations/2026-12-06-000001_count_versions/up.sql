-- Grows by one with every change of a post's count, in the statement that
-- changes it, so that of two reports of one post's count (the workers push
-- them to the apis' caches) the newer is known. A constant default adds the
-- column without rewriting the table (PostgreSQL 11+).
ALTER TABLE like_counts ADD COLUMN version bigint NOT NULL DEFAULT 0;
