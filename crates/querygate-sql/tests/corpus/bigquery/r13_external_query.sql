SELECT * FROM EXTERNAL_QUERY('proj.us.conn', 'SELECT ssn FROM users')
