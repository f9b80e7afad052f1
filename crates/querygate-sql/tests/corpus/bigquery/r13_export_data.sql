EXPORT DATA OPTIONS(uri='gs://bucket/out/*.csv', format='CSV', overwrite=true) AS
SELECT ssn, name FROM ds.users WHERE day = '2024-01-01'
