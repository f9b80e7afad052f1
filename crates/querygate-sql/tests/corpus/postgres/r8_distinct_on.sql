SELECT DISTINCT ON (ssn) name FROM users ORDER BY ssn, name
