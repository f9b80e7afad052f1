SELECT max(ssn), string_agg(ssn, ','), array_agg(u) FROM users u GROUP BY country
