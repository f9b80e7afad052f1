DELETE FROM sessions s USING users u WHERE s.user_id = u.id AND u.banned RETURNING s.token
