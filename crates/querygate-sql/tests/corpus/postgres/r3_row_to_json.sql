SELECT row_to_json(u), row_to_json(u.*), to_jsonb(u) FROM users u
