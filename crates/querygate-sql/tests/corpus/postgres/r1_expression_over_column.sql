SELECT lower(ssn), ssn || '', substr(ssn, 1, 3), ssn::text, CAST(ssn AS int) FROM users
