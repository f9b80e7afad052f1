SELECT ssn INTO TEMP stash FROM users;
SELECT * FROM stash
