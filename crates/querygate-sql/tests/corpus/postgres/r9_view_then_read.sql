CREATE VIEW v AS SELECT lower(ssn) AS s FROM users;
SELECT s FROM v
