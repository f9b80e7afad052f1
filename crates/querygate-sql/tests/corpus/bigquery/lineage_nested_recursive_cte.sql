-- nested recursive CTEs: each body sees its own WITH
WITH RECURSIVE outer_r AS (
  WITH RECURSIVE inner_r AS (SELECT ssn AS a FROM ds.users UNION ALL SELECT a FROM inner_r)
  SELECT a FROM inner_r
  UNION ALL SELECT a FROM outer_r
)
SELECT a FROM outer_r
