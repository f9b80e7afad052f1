-- c
SELECT name FROM ds.users -- trailing comment
/* and a block */
