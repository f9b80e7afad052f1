-- CREATE TABLE … COPY: sqlparser cannot read it, so it is opaque
CREATE TABLE ds.x COPY ds.y
