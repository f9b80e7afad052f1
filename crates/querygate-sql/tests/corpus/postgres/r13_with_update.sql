WITH x AS (SELECT id FROM users WHERE name = 'a') UPDATE accounts SET balance = 0 WHERE id IN (SELECT id FROM x)
