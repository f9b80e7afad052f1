-- attacks.md row 13: the parser reads the lines after COPY … FROM STDIN as inline data,
-- but the server runs them as statements after the COPY: opaque
COPY t FROM STDIN;
DELETE FROM users
