SELECT u.*, o.total FROM ds.users u JOIN ds.orders o ON u.id = o.user_id
