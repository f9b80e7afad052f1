CREATE VIEW ds.v AS SELECT lower(ssn) AS s FROM ds.users
