-- attacks.md row 13: a data-modifying statement behind WITH
WITH x AS (SELECT ssn AS a FROM ds.users) INSERT INTO ds.t SELECT * FROM x
