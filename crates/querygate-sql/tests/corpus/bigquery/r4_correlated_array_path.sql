-- BigQuery: a path over an earlier FROM item is an implicit UNNEST, not a table
SELECT a.email FROM ds.users AS u, u.contacts AS a
