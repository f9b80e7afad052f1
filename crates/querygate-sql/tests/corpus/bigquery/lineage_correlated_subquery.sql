SELECT u.name, (SELECT MAX(o.total) FROM ds.orders o WHERE o.user_id = u.id) AS top FROM ds.users u
