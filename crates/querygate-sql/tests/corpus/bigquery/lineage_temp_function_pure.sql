CREATE TEMP FUNCTION double_it(x INT64) AS (x * 2);
SELECT double_it(a) FROM ds.t
