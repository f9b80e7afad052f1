-- PostgreSQL: a bare ORDER BY name is the output alias; inside an expression it is the input column
SELECT ssn AS name FROM users ORDER BY lower(name), name
