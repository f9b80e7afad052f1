SELECT ssn, name INTO TEMP stash FROM users
