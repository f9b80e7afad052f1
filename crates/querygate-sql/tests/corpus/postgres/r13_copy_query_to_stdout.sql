COPY (SELECT lower(ssn) FROM users) TO STDOUT
