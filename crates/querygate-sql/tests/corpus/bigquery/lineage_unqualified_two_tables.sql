SELECT name, total FROM ds.users u JOIN ds.orders o ON u.id = o.user_id
