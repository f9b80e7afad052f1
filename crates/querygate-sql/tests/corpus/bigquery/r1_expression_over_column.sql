SELECT lower(ssn), ssn || '', SUBSTR(ssn, 1, 3), CAST(ssn AS STRING) AS s, SAFE_CAST(ssn AS INT64) FROM ds.users
