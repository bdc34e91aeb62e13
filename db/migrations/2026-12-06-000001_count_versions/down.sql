ALTER TABLE like_counts DROP COLUMN version;
