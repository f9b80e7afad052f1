INSERT INTO users (id, created) VALUES (DEFAULT, now())
