SELECT * EXCEPT (ssn) REPLACE (UPPER(name) AS name) FROM ds.users
