WITH a AS (SELECT ssn AS x, name FROM ds.users), b AS (SELECT * FROM a), c AS (SELECT x AS y FROM b) SELECT c.y, b.* EXCEPT (x) FROM c, b
