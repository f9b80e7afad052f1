-- a protected value laundered through a script variable
DECLARE v STRING;
SET v = (SELECT ssn FROM ds.users LIMIT 1);
SELECT v AS not_ssn
