INSERT INTO users (id, email) VALUES (1, 'a@b.c') ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email RETURNING *
