SELECT COUNT(*) FROM ds.users WHERE ssn LIKE '1%'
