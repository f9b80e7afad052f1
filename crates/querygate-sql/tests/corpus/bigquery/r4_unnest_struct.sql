SELECT c.email, c FROM ds.users, UNNEST(contacts) AS c
