-- a procedure body's statements are reported as if they ran
CREATE PROCEDURE purge(days int) AS BEGIN
  DELETE FROM sessions WHERE age > days;
  SELECT ssn FROM users;
END
