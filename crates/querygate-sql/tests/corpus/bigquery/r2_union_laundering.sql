SELECT name FROM ds.users UNION ALL SELECT ssn FROM ds.users
