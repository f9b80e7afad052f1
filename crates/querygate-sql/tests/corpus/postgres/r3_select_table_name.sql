SELECT users FROM users
