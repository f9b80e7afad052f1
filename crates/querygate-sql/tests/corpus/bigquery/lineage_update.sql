UPDATE ds.users SET email = LOWER(email), note = (SELECT MAX(n) FROM ds.notes WHERE notes.uid = users.id) WHERE id = 1
