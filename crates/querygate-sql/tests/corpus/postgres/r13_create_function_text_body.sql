-- a SQL function body is text the analyzer cannot see
CREATE FUNCTION f() RETURNS text AS $$ SELECT ssn FROM users LIMIT 1 $$ LANGUAGE sql;
SELECT f()
