INSERT INTO ds.copy (a, b) SELECT ssn, name FROM ds.users
