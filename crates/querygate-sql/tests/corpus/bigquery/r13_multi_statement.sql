-- attacks.md row 13: a second statement after a harmless one
SELECT 1; DROP TABLE ds.x
