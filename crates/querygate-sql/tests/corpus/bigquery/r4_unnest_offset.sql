SELECT tag, pos FROM ds.users u, UNNEST(u.tags) AS tag WITH OFFSET AS pos
