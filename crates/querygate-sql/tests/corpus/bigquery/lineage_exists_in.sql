SELECT id FROM ds.users u WHERE EXISTS (SELECT 1 FROM ds.banned b WHERE b.ssn = u.ssn) AND id IN (SELECT user_id FROM ds.orders)
