-- attacks.md row 9: copy into a temp table, then read it: lineage follows the table
CREATE TEMP TABLE stash AS SELECT ssn AS x FROM ds.users;
SELECT x FROM stash
