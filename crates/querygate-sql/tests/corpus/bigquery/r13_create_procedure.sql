-- BigQuery's CREATE PROCEDURE has no AS; sqlparser cannot read it: opaque
CREATE PROCEDURE ds.p(x INT64)
BEGIN
  DELETE FROM ds.t WHERE id = x;
END
