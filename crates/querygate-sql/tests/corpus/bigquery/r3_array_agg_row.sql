SELECT ARRAY_AGG(t) FROM ds.users t
