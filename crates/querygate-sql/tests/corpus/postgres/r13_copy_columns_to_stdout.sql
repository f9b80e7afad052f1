COPY users (id, ssn) TO STDOUT WITH (FORMAT csv, HEADER true)
