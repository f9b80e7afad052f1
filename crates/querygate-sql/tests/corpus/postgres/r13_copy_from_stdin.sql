COPY users (id, name) FROM STDIN
