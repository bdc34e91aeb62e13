DROP TABLE like_counts;
DROP TABLE likes;
