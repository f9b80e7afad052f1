UPDATE accounts a SET email = u.email FROM users u WHERE a.user_id = u.id RETURNING a.id, u.ssn
