-- the error message carries data to the client
RAISE USING MESSAGE = (SELECT ssn FROM ds.users LIMIT 1)
