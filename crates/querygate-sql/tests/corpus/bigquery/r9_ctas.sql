CREATE TABLE ds.copy AS SELECT ssn, name FROM ds.users
