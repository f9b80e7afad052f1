SELECT name FROM users UNION SELECT ssn FROM users
