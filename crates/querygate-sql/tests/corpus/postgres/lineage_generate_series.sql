SELECT g, u.name FROM users u, generate_series(1, 3) AS g
