SELECT query_to_xml('SELECT ssn FROM users', true, false, '')
