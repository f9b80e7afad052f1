-- BigQuery loops: sqlparser cannot read them, so the script is opaque
FOR r IN (SELECT ssn FROM ds.users) DO
  SELECT r.ssn;
END FOR
