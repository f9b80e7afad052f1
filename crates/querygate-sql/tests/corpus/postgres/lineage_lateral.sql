SELECT u.name, x.total FROM users u, LATERAL (SELECT sum(amount) AS total FROM orders o WHERE o.user_id = u.id) x
