SELECT format('%s', u) FROM users u
